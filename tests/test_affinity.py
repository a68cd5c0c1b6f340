"""Model affinity, decided pass by pass: wait for a busy worker that holds the job's model or
load it on an idle one, which idle worker loads it, and no job starved by the warm round.

The fleet is what the dispatcher reads: heartbeat documents (each cached model with its
measured load time) and render-time history in Redis, written here by the test as workers
and finished jobs write them. No worker runs the jobs: the test moves each one through
running to succeeded, as its worker would.
"""

import json
import time

import pytest
from redis import Redis

from scheduler.control import JobControl
from scheduler.dispatcher import MAX_OVERTAKEN, Dispatcher
from scheduler.timing import timing_of
from shared import keys
from shared.jobspec import parse_spec
from shared.vocabulary import JobStatus
from tests.conftest import settings_on_db

SPEC = {"prompt": "p", "width": 64, "height": 64, "steps": 2, "hardware": "cpu"}
MIB = 2**20
WAIT_S = 1.5  # RENDERFARM_AFFINITY_WAIT_S here


@pytest.fixture
def fleet(redis_url, models_dir, tmp_path):
    settings = settings_on_db(redis_url, 15, models_dir, tmp_path)
    settings = settings.model_copy(update={"affinity_wait_s": WAIT_S})
    control = JobControl(settings)
    dispatcher = Dispatcher(settings, celery=control.celery)
    redis = Redis.from_url(settings.redis_url)

    class Fleet:
        def worker_up(self, name: str, holds: dict[str, float], full: bool = True) -> None:
            """A live idle CPU worker holding `holds` (model -> measured load seconds);
            `full`: its cache has no room for another model."""
            beat = {
                "name": name,
                "hardware": "cpu",
                "kinds": ["txt2img", "img2img", "upscale"],
                "store": {"checkpoint": ["demo-sd15", "demo-sdxl", "broken-model"]},
                "models": [
                    {"name": m, "family": "checkpoint", "size_bytes": 100 * MIB, "locks": 0}
                    | {"tier": "ram", "cost_s": cost_s}
                    for m, cost_s in holds.items()
                ],
                "cache_budget": 100 * MIB * len(holds) + (MIB if full else 2**34),
                "cache_bytes": 100 * MIB * len(holds),
            }
            redis.set(keys.worker(name), json.dumps(beat), px=60_000)
            redis.sadd(keys.workers_index(), name)
            redis.sadd(keys.fleet_changed(), name)  # as a worker beating after a change

        def rendered(self, model: str, seconds: float) -> None:
            """History: jobs of `model` (this size and steps) render in `seconds` on cpu."""
            spec = parse_spec({**SPEC, "model": model}, settings)
            redis.lpush(keys.render_times("cpu", timing_of(spec)), *[seconds] * 3)

        def submit(self, model: str, prompt: str = "p", **more) -> str:
            spec = parse_spec({**SPEC, "model": model, "prompt": prompt, **more}, settings)
            record, _ = control.submit(spec, "alice")
            return record["id"]

        def get(self, job_id: str) -> dict:
            return control.records.get(job_id)

        def finish(self, job_id: str) -> None:
            """Its worker runs the job to success."""
            rec = self.get(job_id)
            records, worker = control.records, rec["target"]
            redis.set(keys.lease(job_id), f"{rec['attempt']}:{worker}", px=60_000)
            assert records.transition(
                job_id, JobStatus.RUNNING, (JobStatus.DISPATCHED,), rec["attempt"], worker=worker
            )
            assert records.transition(
                job_id, JobStatus.SUCCEEDED, (JobStatus.RUNNING,), rec["attempt"]
            )

    yield Fleet(), dispatcher
    redis.flushdb()


def test_a_job_waits_for_the_busy_holder_when_it_frees_up_sooner_than_a_load(fleet):
    f, dispatcher = fleet
    f.worker_up("w1", {"demo-sd15": 5.0})  # loading it takes 5 s
    f.worker_up("w2", {}, full=False)
    f.rendered("demo-sd15", 0.2)  # rendering one 0.2 s
    first, second = f.submit("demo-sd15"), f.submit("demo-sd15")
    assert dispatcher.dispatch() == 1
    assert f.get(first)["target"] == "w1"
    # w2 is idle, but w1 is free long before w2 could load the model.
    assert dispatcher.dispatch() == 0
    assert f.get(second)["waiting"] == "waiting for a worker that holds the model"
    f.finish(first)
    assert dispatcher.dispatch() == 1
    assert f.get(second)["target"] == "w1" and f.get(second)["warm"] == 1


def test_a_job_never_waits_longer_than_the_affinity_bound(fleet):
    f, dispatcher = fleet
    f.worker_up("w1", {"demo-sd15": 5.0})
    f.worker_up("w2", {}, full=False)
    f.rendered("demo-sd15", 0.2)
    f.submit("demo-sd15")
    second = f.submit("demo-sd15")
    assert dispatcher.dispatch() == 1
    assert dispatcher.dispatch() == 0  # waits for w1...
    time.sleep(WAIT_S)  # ... w1 stays busy (its job hangs) past the bound
    assert dispatcher.dispatch() == 1
    assert f.get(second)["target"] == "w2" and f.get(second)["warm"] == 0


def test_a_job_loads_on_an_idle_worker_when_the_holder_is_busy_longer_than_a_load(fleet):
    f, dispatcher = fleet
    f.worker_up("w1", {"demo-sd15": 0.5})  # a quick load...
    f.worker_up("w2", {}, full=False)
    f.rendered("demo-sd15", 60.0)  # ... and a long render
    first, second = f.submit("demo-sd15"), f.submit("demo-sd15")
    assert dispatcher.dispatch() == 2
    assert (f.get(first)["target"], f.get(second)["target"]) == ("w1", "w2")


def test_the_idle_worker_that_loads_a_cold_model_is_the_one_that_loses_least(fleet):
    f, dispatcher = fleet
    # Both caches are full. w1 holds the model the farm keeps asking for, w2 one nobody
    # has asked for: whoever loads demo-sd15 evicts what it holds.
    f.worker_up("w1", {"demo-sdxl": 2.0})
    f.worker_up("w2", {"old-model": 2.0})
    for i in range(3):
        job = f.submit("demo-sdxl", f"xl {i}")
        assert dispatcher.dispatch() == 1 and f.get(job)["target"] == "w1"
        f.finish(job)
    cold = f.submit("demo-sd15")
    assert dispatcher.dispatch() == 1
    assert f.get(cold)["target"] == "w2", "w1 would have evicted the model in demand"
    assert f.get(cold)["evict"] == "checkpoint:old-model"  # what w2's load should evict


def test_a_second_copy_is_what_the_fleet_loses_least_by(fleet):
    f, dispatcher = fleet
    f.worker_up("w1", {"broken-model": 2.0})  # the only copy, in some demand
    f.worker_up("w2", {"demo-sdxl": 2.0})  # in more demand, but w3 holds it too
    f.worker_up("w3", {"demo-sdxl": 2.0})
    for model, n in (("broken-model", 2), ("demo-sdxl", 6)):
        for i in range(n):
            job = f.submit(model, f"{model} {i}")
            assert dispatcher.dispatch() == 1
            f.finish(job)
    cold = f.submit("demo-sd15")
    assert dispatcher.dispatch() == 1
    assert f.get(cold)["target"] == "w2" and f.get(cold)["evict"] == "checkpoint:demo-sdxl"


def test_a_cache_change_is_routed_on_at_the_next_pass(fleet):
    f, dispatcher = fleet
    f.worker_up("w1", {}, full=False)
    f.worker_up("w2", {}, full=False)
    assert dispatcher.dispatch() == 0  # the fleet read: nobody holds anything
    # w2 loaded demo-sd15 and beat at once; the next pass sees it, long before the
    # periodic re-read of every heartbeat (a quarter interval, 0.5 s) is due.
    f.worker_up("w2", {"demo-sd15": 1.0}, full=False)
    job = f.submit("demo-sd15")
    assert dispatcher.dispatch() == 1
    assert f.get(job)["target"] == "w2" and f.get(job)["warm"] == 1


def test_the_warm_round_never_starves_a_cold_models_job(fleet):
    f, dispatcher = fleet
    f.worker_up("w1", {"demo-sdxl": 1.0})  # the only worker
    cold = f.submit("demo-sd15", "cold")
    warm = [f.submit("demo-sdxl", f"xl {i}") for i in range(MAX_OVERTAKEN + 8)]
    order = []
    for _ in range(len(warm) + 1):
        assert dispatcher.dispatch() == 1
        job = next(j for j in [cold, *warm] if f.get(j)["status"] == "dispatched")
        order.append(job)
        f.finish(job)
        if job == cold:
            break
    # Later jobs holding w1's model went first (affinity saved loads), but at most
    # MAX_OVERTAKEN of them: then the cold model's job had its turn.
    assert order[-1] == cold
    assert 1 <= len(order) - 1 <= MAX_OVERTAKEN


def test_a_job_waiting_for_the_holder_is_not_overtaken_by_a_later_cold_start(fleet):
    f, dispatcher = fleet
    f.worker_up("w1", {"demo-sd15": 0.1})  # loading it takes 0.1 s
    f.worker_up("w2", {}, full=False)
    f.rendered("demo-sd15", 0.3)
    first = f.submit("demo-sd15", "first")
    assert dispatcher.dispatch() == 1 and f.get(first)["target"] == "w1"
    second, third = f.submit("demo-sd15", "second"), f.submit("demo-sd15", "third")
    # w1 is free in 0.3 s, within 4 x 0.1 s: the second job would wait for it, the third
    # (behind it) not, so one of them loads on w2 — the one ahead.
    assert dispatcher.dispatch() == 1
    assert f.get(second)["target"] == "w2" and f.get(third)["status"] == "pending"


def test_a_job_without_history_is_estimated_by_steps_and_pixels(fleet):
    f, dispatcher = fleet
    f.worker_up("w1", {"demo-sd15": 1.0})
    f.worker_up("w2", {}, full=False)
    f.rendered("demo-sd15", 0.2)  # history only for 64x64 and 2 steps...
    small = f.submit("demo-sd15", "small")
    assert dispatcher.dispatch() == 1
    f.finish(small)  # ... and a job of that class seen by the dispatcher
    big = {"width": 256, "height": 256, "steps": 40}  # 320x the work: about 64 s
    first = f.submit("demo-sd15", "big", **big)
    assert dispatcher.dispatch() == 1 and f.get(first)["target"] == "w1"
    second = f.submit("demo-sd15", "big too", **big)
    assert dispatcher.dispatch() == 1  # a 1 s load beats a 64 s wait
    assert f.get(second)["target"] == "w2"
