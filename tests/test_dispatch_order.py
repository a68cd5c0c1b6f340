"""The dispatcher's order when several workers are free at once, checked pass by pass.

The fleet is what the dispatcher reads: heartbeat documents in Redis, here written by the
test for two idle CPU workers that hold nothing, so no affinity or timing is involved.
"""

import json

import pytest
from redis import Redis

from scheduler.control import JobControl
from scheduler.dispatcher import Dispatcher
from shared import keys
from shared.jobspec import parse_spec
from shared.vocabulary import Priority
from tests.conftest import settings_on_db

SPEC = {"model": "demo-sd15", "prompt": "p", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def farm_state(redis_url, models_dir, tmp_path):
    settings = settings_on_db(redis_url, 9, models_dir, tmp_path)
    scheduler = JobControl(settings)
    dispatcher = Dispatcher(settings, celery=scheduler.celery)
    redis = Redis.from_url(settings.redis_url)

    def worker_up(name: str) -> None:
        beat = {
            "name": name,
            "hardware": "cpu",
            "kinds": ["txt2img", "img2img", "upscale"],
            "store": {"checkpoint": ["demo-sd15"]},
            "models": [],
            "cache_budget": 2**30,
            "cache_bytes": 0,
        }
        redis.set(keys.worker(name), json.dumps(beat), px=60_000)
        redis.sadd(keys.workers_index(), name)

    def submit(prompt: str, owner: str, priority: str = "normal") -> str:
        spec = parse_spec({**SPEC, "prompt": prompt}, settings)
        record, _ = scheduler.submit(spec, owner, Priority(priority))
        return record["id"]

    def dispatched() -> list[str]:
        recs = [scheduler.records.get(i) for i in scheduler.records.ids_in("dispatched")]
        return [r["spec"]["prompt"] for r in sorted(recs, key=lambda r: r["dispatched_at"])]

    yield worker_up, submit, dispatcher, dispatched
    redis.flushdb()


def test_fairness_never_lets_a_lower_priority_job_take_a_free_worker(farm_state):
    worker_up, submit, dispatcher, dispatched = farm_state
    for i in range(3):
        submit(f"alice {i}", "alice")
    submit("carol low", "carol", priority="low")
    worker_up("w1")
    worker_up("w2")
    # Two free workers, one owner with normal-priority work: both take alice's jobs; the
    # per-owner round-robin only interleaves owners of the same priority.
    assert dispatcher.dispatch() == 2
    assert dispatched() == ["alice 0", "alice 1"]


def test_owners_of_one_priority_share_the_free_workers(farm_state):
    worker_up, submit, dispatcher, dispatched = farm_state
    for i in range(3):
        submit(f"alice {i}", "alice")
    submit("bob 0", "bob")
    submit("carol high", "carol", priority="high")
    for name in ("w1", "w2", "w3"):
        worker_up(name)
    assert dispatcher.dispatch() == 3
    assert dispatched() == ["carol high", "alice 0", "bob 0"]


def test_busy_workers_and_active_owners_follow_every_transition(farm_state):
    worker_up, submit, dispatcher, dispatched = farm_state
    redis, records = dispatcher.redis, dispatcher.records

    def counts() -> tuple[dict, dict]:
        def read(key: str) -> dict:
            return {k.decode(): int(v) for k, v in redis.hgetall(key).items()}

        return read(keys.worker_jobs()), read(keys.owner_jobs())

    jobs = [submit(f"job {i}", "alice" if i < 2 else "bob") for i in range(3)]
    for name in ("w1", "w2", "w3"):
        worker_up(name)
    assert dispatcher.dispatch() == 3
    assert counts() == ({"w1": 1, "w2": 1, "w3": 1}, {"alice": 2, "bob": 1})
    redis.delete(keys.worker_jobs(), keys.owner_jobs())  # a farm from before these counts
    records.rebuild_active()
    assert counts() == ({"w1": 1, "w2": 1, "w3": 1}, {"alice": 2, "bob": 1})
    by_worker = {records.get(j)["target"]: records.get(j) for j in jobs}
    # w1 starts its job; w2's job is canceled; w3's worker vanishes and the reaper requeues.
    first = by_worker["w1"]
    redis.set(keys.lease(first["id"]), f"{first['attempt']}:w1", px=60_000)
    assert records.transition(
        first["id"], "running", ("dispatched",), first["attempt"], worker="w1"
    )
    assert records.transition(by_worker["w2"]["id"], "canceled", ("dispatched",))
    redis.delete(keys.worker("w3"))
    assert dispatcher.reaper.reap() == 1
    assert records.get(by_worker["w3"]["id"])["status"] == "pending"
    assert counts() == ({"w1": 1}, {first["owner"]: 1})
    assert records.transition(first["id"], "succeeded", ("running",), first["attempt"])
    assert counts() == ({}, {})
