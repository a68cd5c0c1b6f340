"""The queue page's queries: jobs by owner, status, model and class, and the gallery — read
from the sorted-set indexes the records keep (shared/keys.py `index`, `gallery`), never by
scanning every record.

One facet reads its index directly (ZCARD + ZREVRANGE); several are intersected
(ZINTERSTORE into a scratch key, in one MULTI, the scratch deleted in it). A prompt search
(`q`) reads the prompts of the newest `SEARCH_SCAN` matches of the other filters and keeps
those containing it: its `total` counts those only, `searched` how many were read, and
`truncated` says more were left unread.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from scheduler.records import JobRecords
from shared import keys
from shared.vocabulary import StatusView

SEARCH_SCAN = 5000
_CHUNK = 500


@dataclass(frozen=True)
class JobQuery:
    owner: str | None = None
    statuses: tuple[StatusView, ...] = ()
    model: str | None = None
    hardware: str | None = None
    q: str | None = None


@dataclass
class Page:
    ids: list[str]
    total: int
    truncated: bool = False
    searched: int | None = None  # jobs whose prompts a search read (None: no search)
    extra: dict[str, Any] = field(default_factory=dict)


def _range(redis: Redis, query: JobQuery, start: int, stop: int) -> tuple[list[str], int]:
    """Ids newest first in [start, stop] (inclusive) and how many match the facets."""
    facets = [
        keys.index(facet, value)
        for facet, value in (
            ("owner", query.owner),
            ("model", query.model),
            ("hardware", query.hardware),
        )
        if value
    ]
    statuses = [keys.index("status", s) for s in dict.fromkeys(query.statuses)]
    if len(statuses) == 1:
        facets.append(statuses[0])
    if not facets and not statuses:
        facets = [keys.jobs_index()]
    if len(facets) == 1 and len(statuses) <= 1:
        with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(facets[0])
            pipe.zrevrange(facets[0], start, stop)
            total, ids = pipe.execute()
        return [i.decode() for i in ids], int(total)
    scratch = keys.scratch(uuid.uuid4().hex)
    with redis.pipeline(transaction=True) as pipe:
        if len(statuses) > 1:
            union = scratch + ":status"
            pipe.zunionstore(union, statuses, aggregate="MAX")
            facets.append(union)
        pipe.zinterstore(scratch, facets, aggregate="MAX")
        pipe.zcard(scratch)
        pipe.zrevrange(scratch, start, stop)
        pipe.delete(scratch, scratch + ":status")
        *_, total, ids, _ = pipe.execute()
    return [i.decode() for i in ids], int(total)


def find_jobs(redis: Redis, query: JobQuery, page: int, per_page: int) -> Page:
    """One page (1-based) of the jobs matching `query`, newest first."""
    start = (page - 1) * per_page
    if not query.q:
        ids, total = _range(redis, query, start, start + per_page - 1)
        return Page(ids, total)
    candidates, total = _range(redis, query, 0, SEARCH_SCAN - 1)
    needle = query.q.casefold()
    matches: list[str] = []
    for at in range(0, len(candidates), _CHUNK):
        chunk = candidates[at : at + _CHUNK]
        with redis.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hget(keys.job(job_id), "spec")
            specs = pipe.execute()
        for job_id, raw in zip(chunk, specs, strict=True):
            # Most specs do not contain it anywhere: only those that might are parsed.
            if raw is not None and needle in raw.decode().casefold() and needle in _prompts(raw):
                matches.append(job_id)
    page_ids = matches[start : start + per_page]
    return Page(page_ids, len(matches), total > len(candidates), len(candidates))


def _prompts(raw_spec: bytes) -> str:
    spec = json.loads(raw_spec)
    return f"{spec.get('prompt', '')}\n{spec.get('negative_prompt', '')}".casefold()


def gallery(
    redis: Redis, records: JobRecords, owner: str | None, page: int, per_page: int
) -> tuple[list[dict[str, Any]], int]:
    """One page of outputs of succeeded jobs, newest first: (job record, output index) pairs
    as dicts with `record` and `index`, and how many there are in all."""
    key = keys.gallery(owner or "")
    start = (page - 1) * per_page
    with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(key)
        pipe.zrevrange(key, start, start + per_page - 1)
        total, members = pipe.execute()
    pairs = [m.decode().rsplit(":", 1) for m in members]
    found = {r["id"]: r for r in records.get_many(list(dict.fromkeys(j for j, _ in pairs)))}
    items = [
        {"record": found[job_id], "index": int(index)} for job_id, index in pairs if job_id in found
    ]
    return items, int(total)
