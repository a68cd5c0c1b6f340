"""The queue page's data in-process: the indexes every change keeps, queries over them, queue
positions, ETAs from the render-time history, and the attempts history."""

import json
import time

import pytest
from redis import Redis

from scheduler.control import JobControl
from scheduler.listing import JobQuery, find_jobs, gallery
from scheduler.positions import QueueView, stages
from shared import keys
from shared.jobspec import parse_spec
from shared.vocabulary import JobStatus, Priority, StatusView
from tests.conftest import settings_on_db

S = JobStatus
SPEC = {"model": "demo-sd15", "prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def jobs(redis_url, models_dir, tmp_path):
    settings = settings_on_db(redis_url, 12, models_dir, tmp_path)
    yield JobControl(settings)
    Redis.from_url(settings.redis_url).flushdb()


def submit(jobs: JobControl, owner="ann", priority=Priority.NORMAL, **spec) -> str:
    spec = parse_spec({**SPEC, **spec}, jobs.settings)
    return jobs.submit(spec, owner, priority)[0]["id"]


def run(jobs: JobControl, job_id: str, worker="w1", hardware="cpu") -> int:
    """Take the job through dispatch to running as the dispatcher and a worker would."""
    rec = jobs.records.get(job_id)
    attempt = rec["attempt"] + 1
    jobs.pending.remove(job_id, rec["owner"])
    assert jobs.records.transition(
        job_id, S.DISPATCHED, (S.PENDING,), rec["attempt"], attempt=attempt, target=worker,
        dispatched_at=time.time(),
    )  # fmt: skip
    assert jobs.records.transition(
        job_id, S.RUNNING, (S.DISPATCHED,), attempt, worker=worker, ran_on=hardware,
        started_at=time.time(), attempts=rec["attempts"] + 1,
    )  # fmt: skip
    return attempt


def succeed(jobs: JobControl, job_id: str, render_s: float = 2.0, hardware="cpu") -> None:
    attempt = run(jobs, job_id, hardware=hardware)
    assert jobs.records.transition(
        job_id, S.SUCCEEDED, (S.RUNNING,), attempt, finished_at=time.time(),
        outputs=[f"jobs/{job_id}/0.png", f"jobs/{job_id}/1.png"], render_s=render_s,
    )  # fmt: skip


def test_filters_and_paging_read_the_indexes(jobs):
    r = jobs.redis
    a1 = submit(jobs, "ann")
    b1 = submit(jobs, "bob", prompt="A Blue Whale")
    a2 = submit(jobs, "ann", hardware="gpu")
    a3 = submit(jobs, "ann")
    succeed(jobs, a1)
    jobs.cancel(b1)
    assert find_jobs(r, JobQuery(), 1, 50).ids == [a3, a2, b1, a1]
    assert find_jobs(r, JobQuery(owner="ann"), 1, 2).ids == [a3, a2]
    second = find_jobs(r, JobQuery(owner="ann"), 2, 2)
    assert (second.ids, second.total) == ([a1], 3)
    queued = find_jobs(r, JobQuery(statuses=(StatusView.QUEUED,)), 1, 50)
    assert (queued.ids, queued.total) == ([a3, a2], 2)
    done = JobQuery(statuses=(StatusView.SUCCEEDED, StatusView.CANCELED))
    assert find_jobs(r, done, 1, 50).ids == [b1, a1]
    both = JobQuery(owner="ann", statuses=(StatusView.SUCCEEDED, StatusView.CANCELED))
    assert find_jobs(r, both, 1, 50).ids == [a1]
    assert find_jobs(r, JobQuery(hardware="gpu"), 1, 50).ids == [a2]
    assert find_jobs(r, JobQuery(model="demo-sd15", owner="bob"), 1, 50).ids == [b1]
    assert find_jobs(r, JobQuery(q="blue whale"), 1, 50).ids == [b1]
    assert find_jobs(r, JobQuery(q="fox", owner="ann"), 1, 50).total == 3
    assert not r.keys(keys.scratch("*"))  # intersections leave nothing behind
    # The status index follows every change: a retried job is queued again.
    jobs.retry(b1)
    assert find_jobs(r, JobQuery(statuses=(StatusView.CANCELED,)), 1, 50).ids == []
    assert b1 in find_jobs(r, JobQuery(statuses=(StatusView.QUEUED,)), 1, 50).ids


def test_gallery_lists_outputs_of_succeeded_jobs(jobs):
    a1, b1 = submit(jobs, "ann"), submit(jobs, "bob")
    succeed(jobs, a1)
    succeed(jobs, b1)
    items, total = gallery(jobs.redis, jobs.records, None, 1, 3)
    assert total == 4
    assert [(i["record"]["id"], i["index"]) for i in items] == [(b1, 1), (b1, 0), (a1, 1)]
    items, total = gallery(jobs.redis, jobs.records, "ann", 1, 50)
    assert total == 2 and {i["record"]["id"] for i in items} == {a1}


def test_attempts_history_records_each_attempt(jobs):
    job_id = submit(jobs)
    attempt = run(jobs, job_id, worker="w1")
    # The lease lapsed: the reaper requeues it; the second attempt fails.
    assert jobs.records.transition(
        job_id, S.PENDING, (S.RUNNING,), attempt, note="attempt 1 lost its worker w1"
    )
    jobs.pending.add(job_id, "ann", Priority.NORMAL, time.time())
    attempt = run(jobs, job_id, worker="w2")
    assert jobs.records.transition(
        job_id, S.FAILED, (S.RUNNING,), attempt, error="boom", finished_at=time.time()
    )
    history = jobs.records.get(job_id)["history"]
    assert [(h["attempt"], h["worker"], h["outcome"], h["error"]) for h in history] == [
        (1, "w1", "requeued", "attempt 1 lost its worker w1"),
        (2, "w2", "failed", "boom"),
    ]
    assert all(h["finished_at"] >= h["started_at"] for h in history)
    st = stages(jobs.records.get(job_id))
    assert st["running_s"] is not None and st["total_s"] >= st["running_s"]


def beat(jobs: JobControl, name: str, hardware: str) -> None:
    jobs.redis.set(keys.worker(name), json.dumps({"name": name, "hardware": hardware}), ex=60)
    jobs.redis.sadd(keys.workers_index(), name)


def test_queue_positions_follow_the_dispatch_order(jobs):
    beat(jobs, "w1", "cpu")
    a1, a2 = submit(jobs, "ann"), submit(jobs, "ann")
    b1 = submit(jobs, "bob")
    high = submit(jobs, "cat", Priority.HIGH)
    gpu = submit(jobs, "ann", hardware="gpu")
    view = QueueView(jobs.redis)
    pos = {j: view.position(jobs.records.get(j)) for j in (high, a1, b1, a2)}
    # High first; then owners interleaved (ann, bob served never: by name order of the
    # set, both 0), then ann's second job.
    assert pos[high] == 1 and pos[a2] == 4 and {pos[a1], pos[b1]} == {2, 3}
    # The gpu job competes only with the auto jobs that a gpu could take.
    assert view.position(jobs.records.get(gpu)) == 5
    # No history: unknown; no live gpu worker: unknown.
    assert view.eta_s(jobs.records.get(a1)) is None
    done = submit(jobs, "dan")
    succeed(jobs, done, render_s=2.0)
    assert jobs.redis.lrange(keys.render_times("cpu", "demo-sd15|64x64|2"), 0, -1) == [b"2.0"]
    view = QueueView(jobs.redis)
    assert view.eta_s(jobs.records.get(a2)) == pytest.approx(3 * 2.0 / 1 + 2.0)  # three ahead
    beat(jobs, "w2", "cpu")
    assert QueueView(jobs.redis).eta_s(jobs.records.get(a2)) == pytest.approx(3 * 2.0 / 2 + 2.0)
    assert QueueView(jobs.redis).eta_s(jobs.records.get(gpu)) is None
    # Running: its remaining share of its median.
    attempt = run(jobs, a1)
    jobs.records.set_progress(a1, attempt, 0.5)
    assert QueueView(jobs.redis).eta_s(jobs.records.get(a1)) == pytest.approx(1.0)
    assert QueueView(jobs.redis).position(jobs.records.get(a1)) is None


def test_cancel_all_ends_every_unfinished_job_of_one_owner_and_no_others(jobs):
    """An account disabled: its queued jobs canceled (a pipeline a chunk at a time), its
    running one asked to stop, its finished one and everyone else's left as they were."""
    queued = [submit(jobs, "leaver") for _ in range(5)]
    running, done, other = submit(jobs, "leaver"), submit(jobs, "leaver"), submit(jobs, "stays")
    run(jobs, running)
    succeed(jobs, done)
    assert jobs.cancel_all("leaver", chunk=2) == 6
    assert {jobs.records.get(j)["status"] for j in queued} == {S.CANCELED}
    assert {jobs.records.get(j)["error"] for j in queued} == {"canceled"}
    still = jobs.records.get(running)
    assert (still["status"], still["cancel_requested"]) == (S.RUNNING, 1)
    assert jobs.records.get(done)["status"] == S.SUCCEEDED
    assert jobs.records.get(other)["status"] == S.PENDING
    assert jobs.redis.zcard(keys.pending("leaver")) == 0
    canceled = find_jobs(jobs.redis, JobQuery(statuses=(StatusView.CANCELED,)), 1, 50)
    assert sorted(canceled.ids) == sorted(queued), "the queue page's index follows"
    assert jobs.cancel_all("leaver") == 1  # the running one, asked again; nothing else left
