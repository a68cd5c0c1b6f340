"""The dispatch benchmark's quick run, on a real Redis: the real dispatcher and simulated
workers (bench/bench_dispatch.py). Read back from the events stream and the records: every
job dispatched once and succeeded, priorities kept, owners interleaved, running limits and
allowed classes kept."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from redis import Redis

from scheduler.dispatcher import PER_OWNER
from scheduler.records import JobRecords
from shared import keys

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(redis_url, tmp_path_factory) -> tuple[Redis, dict]:
    url = redis_url.rsplit("/", 1)[0] + "/10"
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_dispatch", "--quick", "--variants", "new"]
        + ["--redis-url", url, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,  # a guard against a hang, not a measurement
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield Redis.from_url(url), json.loads(out.read_text())
    Redis.from_url(url).flushdb()


def history(redis: Redis) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    """Every job's record, and every status change in order (job id, status)."""
    ids = [i.decode() for i in redis.zrange(keys.jobs_index(), 0, -1)]
    records = {r["id"]: r for r in JobRecords(redis).get_many(ids)}
    changes = [(f[b"job"].decode(), f[b"status"].decode()) for _, f in redis.xrange(keys.events())]
    return records, changes


def test_every_job_is_dispatched_once_and_succeeds(quick_run):
    redis, figures = quick_run
    records, changes = history(redis)
    assert len(records) == figures["results"][0]["pending"] == 400
    dispatched = Counter(job for job, status in changes if status == "dispatched")
    assert set(dispatched.values()) == {1} and len(dispatched) == len(records)
    assert {r["status"] for r in records.values()} == {"succeeded"}
    assert all(r["attempt"] == 1 and len(r["history"]) == 1 for r in records.values())
    check = figures["results"][0]["check"]
    assert check["delivered_once"] == 400 and check["stale_deliveries"] == 0


def test_no_job_takes_a_worker_a_better_job_could_have_had(quick_run):
    """When a job is dispatched, no job of a better priority waits that could have run on
    that worker's class (its owner not held by a running limit; among the first PER_OWNER
    of its owner's jobs, those the dispatcher looks at)."""
    redis, _ = quick_run
    records, changes = history(redis)
    limits = {k.decode() for k in redis.hkeys(keys.running_limits())}
    waiting: dict[str, dict] = {}
    overtaken = []
    for job, status in changes:
        rec = records[job]
        if status == "pending":
            waiting[job] = rec
        elif status == "dispatched":
            waiting.pop(job)
            heads = defaultdict(list)
            for other in sorted(
                waiting.values(), key=lambda r: (r["priority"].rank, r["created_at"])
            ):
                heads[other["owner"]].append(other)
            for owner, head in heads.items():
                overtaken += [
                    (rec["id"], other["id"])
                    for other in head[:PER_OWNER]
                    if owner not in limits
                    and other["priority"].rank < rec["priority"].rank
                    and rec["worker_class"] in other["classes"].split(",")
                ]
    assert overtaken == []


def test_owners_of_one_priority_take_turns(quick_run):
    """Between owners with no limit and every class allowed, one's count of dispatched jobs
    of a priority never runs more than one ahead of another's that still has such jobs
    waiting."""
    redis, _ = quick_run
    records, changes = history(redis)
    limits = {k.decode() for k in redis.hkeys(keys.running_limits())}
    plain = {
        r["owner"]
        for r in records.values()
        if r["owner"] not in limits and sorted(r["hardware"]) == ["cpu", "gpu", "openvino"]
    }
    assert len(plain) > 10
    waiting = {job: records[job] for job, status in changes if status == "pending"}
    count: dict[str, Counter[str]] = defaultdict(Counter)  # priority -> owner -> dispatched
    lead = 0
    for job, status in changes:
        rec = records[job]
        if status != "dispatched":
            continue
        waiting.pop(job)
        owner, priority = rec["owner"], rec["priority"]
        if owner in plain:
            rivals = {r["owner"] for r in waiting.values() if r["priority"] == priority}
            for rival in rivals & plain - {owner}:
                lead = max(lead, count[priority][owner] - count[priority][rival])
            count[priority][owner] += 1
    assert lead <= 1


def test_running_limits_and_allowed_classes_hold(quick_run):
    redis, _ = quick_run
    records, changes = history(redis)
    limits = {k.decode(): int(v) for k, v in redis.hgetall(keys.running_limits()).items()}
    assert limits
    active, most = Counter(), Counter()
    for job, status in changes:
        owner = records[job]["owner"]
        if status == "dispatched":
            active[owner] += 1
            most[owner] = max(most[owner], active[owner])
        elif status == "succeeded":
            active[owner] -= 1
    assert all(most[owner] <= limit for owner, limit in limits.items()), (most, limits)
    for rec in records.values():
        assert rec["worker_class"] in rec["hardware"], rec
    assert any(r["hardware"] == ["cpu"] for r in records.values())
