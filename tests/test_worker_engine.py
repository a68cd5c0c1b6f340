"""The worker's engine in-process: what its cache holds across jobs (seed bugs 001, 003, 004)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from redis import Redis

from scheduler.control import JobControl
from scheduler.dispatcher import Dispatcher
from shared.vocabulary import Hardware
from tests.conftest import settings_on_db
from worker.runner import JobRunner

TINY = {"model": "demo-sd15", "prompt": "p", "width": 64, "height": 64, "steps": 3, "seed": 5}
INIT = "inputs/" + "0" * 64 + ".png"


@pytest.fixture
def engine(redis_url, models_dir, tmp_path):
    """A scheduler, a dispatcher and a job runner sharing one Redis database and storage.

    No worker process consumes the runner's queue: the test dispatches each job to the
    runner by name and then runs it by calling the runner.
    """
    settings = settings_on_db(redis_url, 7, models_dir, tmp_path)
    url = settings.redis_url
    scheduler = JobControl(settings)
    dispatcher = Dispatcher(settings, celery=scheduler.celery)
    runner = JobRunner(settings, Hardware.CPU, "engine-test")

    def run(expect: str = "succeeded", **spec) -> dict:
        from shared.jobspec import parse_spec

        record, _ = scheduler.submit(parse_spec(spec, settings))
        worker = {"name": runner.name, "hardware": runner.hardware}
        assert dispatcher.dispatch_one(record, worker, warm=False)
        runner.run(record["id"], record["attempt"] + 1)
        done = scheduler.records.get(record["id"])
        assert done["status"] == expect, done.get("error")
        return done

    yield scheduler, runner, run
    Redis.from_url(url).flushdb()


def image(runner: JobRunner, record: dict, index: int = 0) -> np.ndarray:
    from worker.images import open_rgb

    return np.asarray(open_rgb(runner.storage.get(record["outputs"][index])))


def loads_of(runner: JobRunner, name: str) -> list[dict]:
    return [e for e in runner.cache.stats()["entries"] if Path(e["path"]).stem == name]


def test_switching_job_kinds_never_reloads_the_checkpoint(engine, gradient_key):
    scheduler, runner, run = engine
    run(**TINY)
    run(**TINY, kind="img2img", init_image=gradient_key)
    run(**TINY, kind="img2img", init_image=gradient_key, mask=gradient_key)
    run(**TINY, hires={"scale": 1.5, "steps": 2})
    run(**TINY, controlnet=[{"model": "demo-controlnet-sd15", "image": gradient_key}])
    run(**TINY)
    stats = runner.cache.stats()
    assert stats["loads"] == 2, "the checkpoint once, the ControlNet once"
    assert stats["hits"] >= 5


def test_controlnet_loads_only_when_a_job_asks_and_preload_is_explicit(engine, gradient_key):
    scheduler, runner, run = engine
    assert runner.cache.stats()["entries"] == []
    runner.preload(["demo-sd15"])
    assert [Path(e["path"]).stem for e in runner.cache.stats()["entries"]] == ["demo-sd15"]
    run(**TINY)
    assert not loads_of(runner, "demo-controlnet-sd15")
    run(**TINY, controlnet=[{"model": "demo-controlnet-sd15", "image": gradient_key}])
    assert len(loads_of(runner, "demo-controlnet-sd15")) == 1
    assert runner.cache.stats()["loads"] == 2


def test_vae_override_is_scoped_to_its_job_and_evictable(engine):
    """Seed 001: SDXL with an explicit VAE, then SD1.5 with none, must use SD1.5's own VAE."""
    scheduler, runner, run = engine
    fresh = image(runner, run(**TINY))  # SD1.5 with its own VAE, nothing else ever loaded

    run(**{**TINY, "model": "demo-sdxl", "vae": "demo-vae-sdxl"})
    again = image(runner, run(**{**TINY, "vae": "automatic"}))
    assert np.array_equal(fresh, again), "SD1.5 renders with its own VAE again"

    vae = loads_of(runner, "demo-vae-sdxl")
    assert len(vae) == 1 and vae[0]["locks"] == 0, "no job holds the override any more"
    before = runner.cache.stats()["bytes_in_use"]
    from worker.cache import CacheKey

    assert runner.cache.unload(CacheKey(vae[0]["path"], vae[0]["dtype"], vae[0]["device"]))
    assert runner.cache.stats()["bytes_in_use"] == before - vae[0]["size_bytes"]
    assert not loads_of(runner, "demo-vae-sdxl")


def test_unload_after_use_works_the_same_for_every_upscaler_family(engine, gradient_key):
    """Seed 000: one family lacked what the unload path assumed. Here there is one path."""
    scheduler, runner, run = engine
    for name in ("demo-esrgan-x4", "demo-realesrgan-x2", "demo-aura-sr"):
        run(kind="upscale", image=gradient_key, upscaler=name, scale=2)
        assert len(loads_of(runner, name)) == 1, "kept in the cache by default"
        run(kind="upscale", image=gradient_key, upscaler=name, scale=2, unload_after=True)
        assert not loads_of(runner, name), f"{name} unloaded after use"
    assert runner.cache.stats()["unloads"] == 3


def test_out_of_memory_evicts_retries_once_then_fails_clearly(engine, gradient_key, monkeypatch):
    """The device has room for one model (RENDERFARM_FAULT_OOM_PROMPT): a job that runs out of
    memory with another model cached succeeds after evicting it; one that needs two models
    fails with the reason, and the worker goes on with the next job."""
    scheduler, runner, run = engine
    monkeypatch.setenv("RENDERFARM_FAULT_OOM_PROMPT", "oom")
    run(**{**TINY, "model": "demo-sdxl"})
    done = run(**{**TINY, "prompt": "oom"})
    assert done["attempts"] == 1, done  # retried inside the attempt, not requeued
    assert [Path(e["path"]).stem for e in runner.cache.stats()["entries"]] == ["demo-sd15"]
    assert runner.cache.stats()["unloads"] == 1  # demo-sdxl made way

    unit = {"model": "demo-controlnet-sd15", "image": gradient_key}
    failed = run("failed", **{**TINY, "prompt": "oom", "controlnet": [unit]})
    assert "out of device memory even after evicting cached models" in failed["error"]
    assert runner.jobs_failed == 1
    run(**TINY)  # the worker is still up and renders the next job


def test_a_job_over_the_time_limit_fails_with_the_reason(engine):
    scheduler, runner, run = engine
    runner.settings = runner.settings.model_copy(update={"job_time_limit_s": 0})
    failed = run("failed", **TINY)
    assert "ran longer than the job time limit (0 s)" in failed["error"]
    assert failed["attempts"] == 1  # failed, not requeued: it would run as long again


@pytest.fixture
def gradient_key(engine) -> str:
    import io

    from PIL import Image

    scheduler, runner, run = engine
    x = np.linspace(0, 255, 40, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (40, 1)), np.tile(x[:, None], (1, 40)), np.full((40, 40), 60)], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="PNG")
    from shared.jobspec import input_key

    key = input_key(buf.getvalue())
    runner.storage.put(key, buf.getvalue(), "image/png")
    return key


def test_a_cache_change_is_beaten_at_once_not_at_the_next_interval(engine):
    """The dispatcher routes by what each worker holds: a load shows in the heartbeat (and
    in `rf:fleet:changed`, which the dispatcher pops) without waiting an interval."""
    from shared import keys
    from worker.heartbeat import Heartbeat

    scheduler, runner, run = engine
    redis = Redis.from_url(scheduler.settings.redis_url)
    heartbeat = Heartbeat(runner, redis, interval_s=600)
    heartbeat.start()  # the first beat: nothing loaded yet
    try:
        assert json.loads(redis.get(keys.worker(runner.name)))["models"] == []
        redis.delete(keys.fleet_changed())
        run(**TINY)
        deadline = time.monotonic() + 30  # far below the 600 s interval
        while runner.name.encode() not in redis.smembers(keys.fleet_changed()):
            assert time.monotonic() < deadline, "no beat after the load"
            time.sleep(0.05)
        beat = json.loads(redis.get(keys.worker(runner.name)))
        held = {m["name"]: m for m in beat["models"]}
        assert "demo-sd15" in held and held["demo-sd15"]["cost_s"] > 0
    finally:
        heartbeat.stop()


def test_the_model_the_dispatch_names_is_the_one_its_load_evicts(engine, gradient_key):
    """The dispatcher names what a cold job's load should evict (the record's `evict`: what
    the fleet loses least by); the worker's cache evicts it before its own policy's pick."""
    from shared import keys
    from shared.jobspec import parse_spec
    from worker.eviction import LeastRecentlyUsed

    scheduler, runner, run = engine
    runner.cache.policy = LeastRecentlyUsed()  # its pick is then known: the oldest
    run(kind="upscale", image=gradient_key, upscaler="demo-esrgan-x4", scale=2)
    run(**TINY)  # demo-sd15, the most recent
    cache = runner.cache
    cache.budget_bytes = cache.bytes_in_use + 50_000  # the next model needs room
    spec = {"kind": "upscale", "image": gradient_key, "upscaler": "demo-aura-sr", "scale": 2}
    record, _ = scheduler.submit(parse_spec(spec, scheduler.settings))
    worker = {"name": runner.name, "hardware": runner.hardware}
    dispatcher = Dispatcher(scheduler.settings, celery=scheduler.celery)
    assert dispatcher.dispatch_one(record, worker, warm=False)
    scheduler.redis.hset(keys.job(record["id"]), "evict", "checkpoint:demo-sd15")
    runner.run(record["id"], record["attempt"] + 1)
    assert scheduler.records.get(record["id"])["status"] == "succeeded"
    held = {Path(e["path"]).stem for e in cache.stats()["entries"]}
    assert held == {"demo-esrgan-x4", "demo-aura-sr"}, "LRU alone would have evicted esrgan"
