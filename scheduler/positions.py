"""Where each waiting job stands in the queue and when it will be done, for the queue page.

The order is the dispatcher's (scheduler/dispatcher.py): dispatched jobs first (a worker
has them), then pending jobs by priority, owners interleaved one job per round (the owner
served longest ago first), then age. A job's position counts only the jobs ahead of it
that could take one of its classes' workers. Its ETA is the work ahead of it on those
classes (their rolling median render times, scheduler/timing.py) shared by the live able
workers, plus its own median; unknown (None) without history for it, or without a live
worker that may run it. Jobs running now are not counted in the work ahead.

One `QueueView` reads the queue once (per request), however many jobs it is asked about.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from redis import Redis

from scheduler.fleet import draining, live_workers
from scheduler.pending import _RANK_SPAN
from scheduler.timing import RenderTimes
from shared import keys
from shared.vocabulary import JobStatus

Classes = frozenset[str]


@dataclass(frozen=True)
class _Waiting:
    job_id: str
    classes: Classes
    timing: str


@dataclass(frozen=True)
class Standing:
    position: int  # 1-based
    work_ahead_s: float  # known medians of the jobs ahead
    unknown_ahead: int  # jobs ahead without history


class QueueView:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.times = RenderTimes(redis)
        self._standings: dict[Classes, dict[str, Standing]] = {}

    @cached_property
    def order(self) -> list[_Waiting]:
        """Every waiting job, in the order the dispatcher would take them."""
        dispatched = sorted(i.decode() for i in self.redis.smembers(keys.in_status("dispatched")))
        owners = self.redis.zrange(keys.pending_owners(), 0, -1, withscores=True)
        with self.redis.pipeline(transaction=False) as pipe:
            for owner, _ in owners:
                pipe.zrange(keys.pending(owner.decode()), 0, -1, withscores=True)
            heads = pipe.execute()
        ranked = []
        for (_, served_at), head in zip(owners, heads, strict=True):
            per_rank: Counter[int] = Counter()
            for job_b, value in head:  # best first within an owner
                rank, created_ms = divmod(int(value), _RANK_SPAN)
                ranked.append(((rank, per_rank[rank], served_at, created_ms), job_b.decode()))
                per_rank[rank] += 1
        ids = dispatched + [job_id for _, job_id in sorted(ranked)]
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "classes", "timing", "status")
            found = pipe.execute()
        waiting = []
        for job_id, (classes, timing, status) in zip(ids, found, strict=True):
            if status is None or JobStatus(status.decode()).final:
                continue
            names = frozenset(c for c in (classes or b"").decode().split(",") if c)
            waiting.append(_Waiting(job_id, names, (timing or b"").decode()))
        return waiting

    @cached_property
    def workers(self) -> Counter[str]:
        """Live workers that take jobs (not draining), per hardware class."""
        live = live_workers(self.redis)
        off = draining(self.redis, [w["name"] for w in live])
        return Counter(w["hardware"] for w in live if w["name"] not in off)

    def _live(self, classes: Classes) -> list[str]:
        return sorted(c for c in classes if self.workers[c])

    def _standings_for(self, classes: Classes) -> dict[str, Standing]:
        """One pass over the order: the standing of every waiting job of exactly `classes`."""
        if classes in self._standings:
            return self._standings[classes]
        live = self._live(classes)
        self.times.prefetch({(c, w.timing) for w in self.order for c in live})
        ahead, work, unknown = 0, 0.0, 0
        found: dict[str, Standing] = {}
        for w in self.order:
            if w.classes == classes:
                found[w.job_id] = Standing(ahead + 1, work, unknown)
            shared = w.classes & classes
            if shared:
                ahead += 1
                median = self.times.best(sorted(shared & set(live)), w.timing)
                if median is None:
                    unknown += 1
                else:
                    work += median
        self._standings[classes] = found
        return found

    def standing(self, record: dict[str, Any]) -> Standing | None:
        if record["status"] not in (JobStatus.PENDING, JobStatus.DISPATCHED):
            return None
        return self._standings_for(_classes(record)).get(record["id"])

    def position(self, record: dict[str, Any]) -> int | None:
        found = self.standing(record)
        return found.position if found else None

    def eta_s(self, record: dict[str, Any]) -> float | None:
        """Seconds until the job is done; None when unknown."""
        timing = record.get("timing", "")
        if record["status"] == JobStatus.RUNNING:
            median = self.times.median(record.get("ran_on", ""), timing)
            if median is None:
                return None
            return round(median * (1 - min(max(record["progress"], 0.0), 1.0)), 2)
        found = self.standing(record)
        if found is None:
            return None
        classes = _classes(record)
        live = self._live(classes)
        own = self.times.best(live, timing)
        if own is None:
            return None
        able = sum(self.workers[c] for c in live)
        # Jobs ahead without history are counted as long as this one.
        ahead = found.work_ahead_s + found.unknown_ahead * own
        return round(ahead / able + own, 2)


def _classes(record: dict[str, Any]) -> Classes:
    return frozenset(c for c in record.get("classes", "").split(",") if c)


def stages(record: dict[str, Any], now: float | None = None) -> dict[str, float | None]:
    """Seconds spent queued, dispatched (sent, not yet started), running, and in all; a stage
    still under way counts until `now`, one not reached is None."""
    now = time.time() if now is None else now
    created, dispatched = record["created_at"], record.get("dispatched_at")
    started, finished = record.get("started_at"), record.get("finished_at")
    status = record["status"]
    # A retried job keeps its earlier timestamps: only those of the current run count.
    if status == JobStatus.PENDING:
        dispatched = started = finished = None
    elif status == JobStatus.DISPATCHED:
        started = finished = None
    elif status == JobStatus.RUNNING:
        finished = None
    if dispatched is not None and dispatched < created:
        dispatched = None

    def span(start: float | None, end: float | None) -> float | None:
        if start is None:
            return None
        return round(max((end if end is not None else now) - start, 0.0), 3)

    end = finished if status.final else None
    return {
        "queued_s": span(created, dispatched if dispatched is not None else end),
        "dispatched_s": span(dispatched, started if started is not None else end)
        if dispatched is not None
        else None,
        "running_s": span(started, finished) if started is not None else None,
        "total_s": span(created, end),
    }
