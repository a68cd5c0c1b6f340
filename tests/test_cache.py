"""The worker's model cache with real torch, diffusers and spandrel objects (seed bugs 000, 001)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.config import Settings
from worker.cache import CacheKey, EntryLocked, ModelCache
from worker.device import make_cache
from worker.eviction import CostAware, LeastRecentlyUsed
from worker.memory import measure_bytes, tensors

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
LIN = (256 * 256 + 256) * 4  # bytes of a float32 Linear(256, 256): weight + bias
POLICIES = ["lru", "cost"]


def key(name: str, variant: str = "") -> CacheKey:
    return CacheKey.of(f"/models/{name}", torch.float32, "cpu", variant)


def linear() -> torch.nn.Linear:
    return torch.nn.Linear(256, 256)


def linears(n: int) -> Callable[[], torch.nn.Module]:
    """A loader of a model of exactly n * LIN bytes."""
    return lambda: torch.nn.Sequential(*[linear() for _ in range(n)])


def module_bytes(*modules: torch.nn.Module) -> int:
    return sum(t.nbytes for m in modules for t in [*m.parameters(), *m.buffers()])


class AuraLike:
    """Stand-in for aura_sr.AuraSR: a plain object whose weights live in `.upsampler`."""

    def __init__(self) -> None:
        self.upsampler = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 12, 3))
        self.input_image_size = 64


@pytest.fixture(scope="module")
def sd15(tmp_path_factory) -> Path:
    from worker.demo_models import build_sd15

    path = tmp_path_factory.mktemp("sd15") / "demo-sd15"
    build_sd15(path)
    return path


@pytest.fixture(scope="module")
def esrgan(tmp_path_factory) -> Path:
    """A random ESRGAN ×4 saved the way upscalers ship: spandrel detects it from the keys."""
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    path = tmp_path_factory.mktemp("esrgan") / "tiny-esrgan.safetensors"
    save_file(ESRGAN(num_filters=8, num_blocks=1).state_dict(), path)
    return path


# -- measuring -------------------------------------------------------------------------------


def test_measure_bytes_counts_parameters_and_buffers_by_hand():
    assert measure_bytes(linear()) == LIN
    assert measure_bytes(torch.nn.Linear(256, 256, dtype=torch.float16)) == LIN // 2
    # weight, bias, running_mean, running_var: 8 float32 each; num_batches_tracked: one int64
    assert measure_bytes(torch.nn.BatchNorm2d(8)) == 4 * 8 * 4 + 8
    assert measure_bytes(torch.nn.Linear(256, 256, device="meta")) == 0


def test_measure_bytes_counts_each_storage_once():
    shared = linear()
    assert measure_bytes(torch.nn.Sequential(shared, shared)) == LIN  # tied modules
    assert measure_bytes([shared, shared.weight[:10], {"again": shared}]) == LIN  # views
    assert measure_bytes((shared, torch.nn.Linear(16, 16))) == LIN + (16 * 16 + 16) * 4


def test_cache_key_is_canonical(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    canonical = CacheKey(str((tmp_path / "model").resolve()), "torch.float32", "cpu")
    assert CacheKey.of("model", torch.float32, torch.device("cpu")) == canonical
    assert CacheKey.of(tmp_path / "link", "torch.float32", "cpu") == canonical
    assert CacheKey.of("model", torch.float32, "cpu", variant="64x64") != canonical
    assert len({canonical, CacheKey.of("link", torch.float32, "cpu")}) == 1


# -- hits, misses, LRU, budget ---------------------------------------------------------------


def test_hits_misses_and_loads_are_counted():
    cache = ModelCache(10 * LIN)
    first = cache.get(key("a"), linear)
    assert cache.get(key("a"), linear) is first
    cache.get(key("b"), linear)
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["loads"]) == (1, 2, 2)
    assert stats["bytes_in_use"] == 2 * LIN and stats["evictions"] == 0


def test_least_recently_used_is_evicted_first():
    cache = ModelCache(3 * LIN, policy="lru")
    for name in "abc":
        cache.get(key(name), linear)
    cache.get(key("a"), linear)  # a is now the most recent
    cache.get(key("d"), linear)
    assert cache.keys() == [key("c"), key("a"), key("d")]
    assert cache.stats()["evictions"] == 1


def test_budget_holds_and_trims_after_a_load_without_size_hint():
    cache = ModelCache(2 * LIN, policy="lru")
    for name in "abcde":
        cache.get(key(name), linear)
        assert cache.bytes_in_use <= 2 * LIN
    stats = cache.stats()
    assert stats["evictions"] == 3 and cache.keys() == [key("d"), key("e")]
    assert stats["high_water_bytes"] == 3 * LIN, "loaded first, then trimmed"


@pytest.mark.parametrize("policy", POLICIES)
def test_size_hint_makes_room_before_loading(policy):
    cache = ModelCache(LIN, policy=policy)
    cache.get(key("a"), linear)
    seen_during_load: list[int] = []

    def loader() -> torch.nn.Linear:
        seen_during_load.append(cache.bytes_in_use)
        return linear()

    cache.get(key("b"), loader, size_hint=LIN)
    assert seen_during_load == [0], "a was gone before b started loading"
    assert cache.keys() == [key("b")] and cache.stats()["high_water_bytes"] == LIN


# -- shared weights --------------------------------------------------------------------------


def test_storage_shared_by_two_entries_is_counted_once():
    shared, own_a, own_b = linear(), torch.nn.Linear(16, 16), torch.nn.Linear(32, 32)
    cache = ModelCache(10 * LIN)
    cache.get(key("a"), lambda: {"shared": shared, "own": own_a})
    cache.get(key("b"), lambda: [shared, own_b])
    stats = cache.stats()
    assert stats["bytes_in_use"] == LIN + module_bytes(own_a) + module_bytes(own_b)
    assert stats["shared_bytes"] == LIN
    assert [e["size_bytes"] for e in stats["entries"]] == [
        LIN + module_bytes(own_a),
        LIN + module_bytes(own_b),
    ]
    cache.unload(key("a"))
    assert cache.bytes_in_use == LIN + module_bytes(own_b), "b still holds the shared weights"
    cache.unload(key("b"))
    assert cache.bytes_in_use == 0


def test_from_pipe_variant_adds_nothing(sd15):
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd15)
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    scheduler_bytes = 3 * 1000 * 4  # PNDM's betas, alphas, alphas_cumprod: 1000 float32 each
    assert measure_bytes(pipe) == module_bytes(*modules) + scheduler_bytes
    assert measure_bytes(img2img) == measure_bytes(pipe)

    cache = ModelCache(2**30)
    cache.get(CacheKey.of(sd15, torch.float32, "cpu"), lambda: pipe)
    cache.get(CacheKey.of(sd15, torch.float32, "cpu", "img2img"), lambda: img2img)
    stats = cache.stats()
    assert stats["bytes_in_use"] == measure_bytes(pipe)
    assert stats["shared_bytes"] == measure_bytes(pipe)


# -- locks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_locked_entry_is_never_evicted_even_over_budget(policy):
    cache = ModelCache(LIN, policy=policy)
    with cache.use(key("a"), linear) as a:
        cache.get(key("b"), linear)  # nothing unlocked to evict but b itself
        cache.get(key("c"), linear)  # b goes, a stays
        assert cache.keys() == [key("a"), key("c")]
        stats = cache.stats()
        assert stats["over_budget_events"] == 2 and stats["bytes_in_use"] == 2 * LIN
        assert stats["entries"][0]["locks"] == 1
        with pytest.raises(EntryLocked, match="in use by 1 job"):
            cache.unload(key("a"))
        assert cache.clear() == 1 and cache.keys() == [key("a")], "clear leaves a"
        assert cache.get(key("a"), linear) is a
    assert cache.stats()["entries"][0]["locks"] == 0
    assert cache.unload(key("a"))


@pytest.mark.parametrize("policy", POLICIES)
def test_lock_is_reentrant_and_released_on_exception(policy):
    cache = ModelCache(LIN, policy=policy)
    with pytest.raises(ValueError), cache.use(key("a"), linear):
        with cache.use(key("a"), linear):
            assert cache.stats()["entries"][0]["locks"] == 2
        assert cache.stats()["entries"][0]["locks"] == 1
        raise ValueError("the job failed")
    assert cache.stats()["entries"][0]["locks"] == 0
    cache.get(key("b"), linear)
    assert cache.keys() == [key("b")], "a is evictable again"


@pytest.mark.parametrize("policy", POLICIES)
def test_releasing_a_lock_shrinks_an_over_budget_cache(policy):
    cache = ModelCache(LIN, policy=policy)
    with cache.use(key("a"), linear), cache.use(key("b"), linear):
        assert cache.bytes_in_use == 2 * LIN
    assert cache.bytes_in_use == LIN and len(cache) == 1


# -- eviction policies -----------------------------------------------------------------------
# Reload costs are given (`cost_s`) rather than measured, so every outcome is deterministic.


@pytest.mark.parametrize("policy", POLICIES)
def test_a_frequently_used_model_outlasts_a_recent_one_off_only_under_cost(policy):
    cache = ModelCache(2 * LIN, policy=policy)
    for _ in range(5):
        cache.get(key("popular"), linear, cost_s=1.0)
    cache.get(key("one-off"), linear, cost_s=1.0)
    cache.get(key("next"), linear, cost_s=1.0)  # one of the two must go
    kept = {"lru": key("one-off"), "cost": key("popular")}[policy]
    assert set(cache.keys()) == {kept, key("next")}
    assert cache.stats()["evictions"] == 1


@pytest.mark.parametrize("policy", POLICIES)
def test_the_model_the_dispatcher_names_is_evicted_first_whatever_the_policy(policy):
    cache = ModelCache(2 * LIN, policy=policy)
    for _ in range(5):
        cache.get(key("popular-here"), linear, cost_s=1.0)  # either policy would keep it
    cache.get(key("recent"), linear, cost_s=1.0)
    # The fleet has another copy of popular-here, and nobody else has `recent`.
    with cache.evicting_first({key("popular-here")}):
        cache.get(key("next"), linear, cost_s=1.0)
    assert set(cache.keys()) == {key("recent"), key("next")}
    assert cache.stats()["evictions"] == 1


def test_cost_evicts_a_big_model_quick_to_reload_before_a_small_slow_one():
    cache = ModelCache(6 * LIN, policy="cost")
    cache.get(key("small-slow"), linear, cost_s=2.0)  # the least recently used
    cache.get(key("big-quick"), linears(4), cost_s=0.5)
    cache.get(key("new"), linears(2), cost_s=1.0)  # 7 LIN: one of them must go
    assert set(cache.keys()) == {key("small-slow"), key("new")}, "0.5 s / 4 LIN < 2 s / LIN"

    lru = ModelCache(6 * LIN, policy="lru")
    for name, load in (("small-slow", linear), ("big-quick", linears(4)), ("new", linears(2))):
        lru.get(key(name), load)
    assert set(lru.keys()) == {key("big-quick"), key("new")}, "LRU drops the oldest"


def test_cost_evicts_a_small_cheap_model_before_a_big_expensive_one():
    cache = ModelCache(6 * LIN, policy="cost")
    cache.get(key("big-slow"), linears(4), cost_s=40.0)  # 10 s per LIN to load again
    cache.get(key("small-quick"), linear, cost_s=0.5)
    cache.get(key("new"), linears(2), cost_s=1.0)
    assert set(cache.keys()) == {key("big-slow"), key("new")}


def test_cost_never_evicts_a_locked_entry_even_the_cheapest():
    cache = ModelCache(2 * LIN, policy="cost")
    with cache.use(key("cheap"), linear, cost_s=0.001):
        cache.get(key("dear"), linear, cost_s=100.0)
        cache.get(key("new"), linear, cost_s=1.0)
        assert set(cache.keys()) == {key("cheap"), key("new")}, "dear went: cheap is held"
        cache.get(key("more"), linear, cost_s=1.0)  # only new can go
        assert set(cache.keys()) == {key("cheap"), key("more")}
        with cache.use(key("more"), linear):
            cache.get(key("over"), linear, cost_s=1.0)  # nothing unlocked but itself
            assert cache.stats()["over_budget_events"] == 1 and len(cache) == 3
    assert cache.bytes_in_use <= cache.budget_bytes and key("cheap") in cache


def test_cost_ages_out_a_model_popular_long_ago():
    """The clock rises to each evicted priority: one-offs catch up with an old count."""
    cache = ModelCache(2 * LIN, policy="cost")
    for _ in range(3):
        cache.get(key("old"), linear, cost_s=1.0)
    for i in range(1, 4):
        cache.get(key(f"one-off-{i}"), linear, cost_s=1.0)
    assert key("old") in cache, "3 uses outweigh one-offs for a while (LRU dropped it at 2)"
    for i in range(4, 6):
        cache.get(key(f"one-off-{i}"), linear, cost_s=1.0)
    assert key("old") not in cache


def test_use_counts_survive_an_eviction_halved():
    policy = CostAware()
    cache = ModelCache(2 * LIN, policy=policy)
    for _ in range(6):
        cache.get(key("popular"), linear, cost_s=1.0)
    with cache.use(key("b"), linear, cost_s=1.0), cache.use(key("c"), linear, cost_s=1.5):
        pass  # popular, the only entry not held, made room for c
    assert key("popular") not in cache and policy.uses(key("popular")) == 3
    cache.get(key("popular"), linear, cost_s=1.0)  # back with 3 + 1 uses: b goes, not it
    assert set(cache.keys()) == {key("c"), key("popular")}
    cache.get(key("d"), linear, cost_s=1.0)
    assert set(cache.keys()) == {key("popular"), key("d")}, "and outlasts c as well"
    assert policy.uses(key("popular")) == 4 and policy.uses(key("b")) == 0.5


def test_cost_policy_remembers_a_bounded_number_of_models():
    policy = CostAware(history=2)
    for name in "abc":
        policy.loaded(name, LIN, 1.0)
        policy.hit(name)
        policy.removed(name, evicted=False)  # unloaded on request: counts kept whole
    assert [policy.uses(n) for n in "abc"] == [0, 2, 2], "a was forgotten"
    assert policy.priority("b") is None and policy.clock == 0, "no eviction, no clock"


def test_the_policy_is_the_workers_setting(monkeypatch):
    assert isinstance(make_cache(Settings(), "cpu").policy, CostAware)
    monkeypatch.setenv("RENDERFARM_CACHE_POLICY", "lru")
    cache = make_cache(Settings(), "cpu")
    assert isinstance(cache.policy, LeastRecentlyUsed) and cache.stats()["policy"] == "lru"
    monkeypatch.setenv("RENDERFARM_CACHE_POLICY", "fifo")
    with pytest.raises(ValueError, match="cache_policy"):
        Settings()
    with pytest.raises(ValueError, match="cache_policy must be 'cost' or 'lru'"):
        ModelCache(LIN, policy="fifo")  # type: ignore[arg-type]


def test_cost_defaults_to_the_measured_load_time():
    cache = ModelCache(10 * LIN, policy="cost")

    def slow() -> torch.nn.Linear:
        time.sleep(0.05)
        return linear()

    cache.get(key("slow"), slow)
    cache.get(key("told"), linear, cost_s=7.5)
    by_path = {Path(e["path"]).name: e for e in cache.stats()["entries"]}
    assert by_path["slow"]["cost_s"] == by_path["slow"]["load_s"] >= 0.05
    assert by_path["told"]["cost_s"] == 7.5


@pytest.mark.parametrize("policy", POLICIES)
def test_the_benchs_offline_simulation_makes_the_real_caches_choices(policy):
    """bench.bench_cache checks its policy comparison against the real cache with this."""
    from bench.bench_cache import simulate, zipf_trace

    sizes = [n * LIN for n in (1, 3, 1, 2, 4)]
    costs = [0.2, 0.3, 0.9, 0.1, 0.5]
    trace, _ = zipf_trace(len(sizes), 40, 1.1, seed=3)
    cache = ModelCache(6 * LIN, policy=policy)
    for m in trace:
        with cache.use(key(f"m{m}"), linears(sizes[m] // LIN), size_hint=sizes[m], cost_s=costs[m]):
            pass
    sim = simulate(trace, sizes, sizes, 6 * LIN, policy, lambda m, n: costs[m])
    stats = cache.stats()
    assert (sim["loads"], sim["evictions"]) == (stats["loads"], stats["evictions"])
    assert stats["evictions"] > 10, "the trace makes the policy choose, often"


# -- loading ---------------------------------------------------------------------------------


def test_failed_load_leaves_nothing_and_the_next_get_retries():
    cache = ModelCache(10 * LIN)
    half_built: list[weakref.ref] = []

    def broken() -> Any:
        model = torch.nn.Linear(512, 512)
        half_built.append(weakref.ref(model.weight))
        raise RuntimeError("corrupt weights")

    with pytest.raises(RuntimeError, match="corrupt weights") as failure:
        cache.get(key("a"), broken)
    # Freed even while the caller still holds the exception (e.g. to log its traceback).
    assert failure.traceback and half_built[0]() is None, "the half-built model was freed"
    stats = cache.stats()
    assert stats["entries"] == [] and stats["bytes_in_use"] == 0
    assert (stats["load_failures"], stats["loads"]) == (1, 0)
    assert key("a") not in cache and not cache._key_locks

    cache.get(key("a"), linear)
    assert cache.stats()["loads"] == 1 and cache.stats()["misses"] == 2


def test_concurrent_gets_of_one_key_load_once():
    cache = ModelCache(10 * LIN)
    calls: list[int] = []

    def slow() -> torch.nn.Linear:
        calls.append(1)
        time.sleep(0.3)
        return linear()

    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get(key("a"), slow))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 6
    assert all(r is results[0] for r in results)
    stats = cache.stats()
    assert (stats["loads"], stats["misses"], stats["hits"]) == (1, 1, 5)


def test_different_keys_load_in_parallel():
    cache = ModelCache(10 * LIN)
    both_loading = threading.Barrier(2, timeout=5)  # breaks if the loads were serialised
    errors: list[BaseException] = []

    def load(name: str) -> None:
        def loader() -> torch.nn.Linear:
            both_loading.wait()
            return linear()

        try:
            cache.get(key(name), loader)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) == 2


# -- every family, one path (seed bug 000) ---------------------------------------------------

FAMILIES = ["nn.Module", "diffusers pipeline", "spandrel descriptor", "AuraSR-like wrapper"]


def family_loader(family: str, sd15: Path, esrgan: Path) -> Callable[[], Any]:
    if family == "nn.Module":
        return linear
    if family == "diffusers pipeline":
        from diffusers import StableDiffusionPipeline

        return lambda: StableDiffusionPipeline.from_pretrained(sd15)
    if family == "spandrel descriptor":
        import spandrel

        return lambda: spandrel.ModelLoader().load_from_file(esrgan)
    return AuraLike


def expected_bytes(family: str, obj: Any) -> int:
    """What the family's weights weigh, from the family's own structure."""
    if family == "nn.Module":
        return LIN
    if family == "diffusers pipeline":
        modules = [c for c in obj.components.values() if isinstance(c, torch.nn.Module)]
        return module_bytes(*modules) + 3 * 1000 * 4  # + the scheduler's tables
    if family == "spandrel descriptor":
        return module_bytes(obj.model)
    return module_bytes(obj.upsampler)


def watch(family: str, obj: Any) -> tuple[list[weakref.ref], int]:
    """Weak references to every weight of `obj`, and its expected size."""
    return [weakref.ref(t) for t in tensors(obj)], expected_bytes(family, obj)


@pytest.mark.parametrize("family", FAMILIES)
def test_unload_and_evict_work_the_same_for_every_family(family, sd15, esrgan):
    loader = family_loader(family, sd15, esrgan)
    cache = ModelCache(2**30)
    weights, size = watch(family, cache.get(key(family), loader))
    assert cache.stats()["entries"][0]["size_bytes"] == size == cache.bytes_in_use > 0
    assert cache.unload(key(family))
    assert all(w() is None for w in weights), "unloaded weights are freed"
    assert cache.bytes_in_use == 0 and not cache.unload(key(family))

    cache = ModelCache(size, policy="cost")  # room for this model alone
    weights, _ = watch(family, cache.get(key(family), loader))
    cache.get(key("next"), lambda: torch.nn.Linear(4, 4))
    assert key(family) not in cache and cache.stats()["evictions"] == 1
    assert all(w() is None for w in weights), "evicted weights are freed"


@pytest.mark.parametrize("policy", POLICIES)
def test_on_evict_is_told_on_eviction_and_unload(policy):
    cache = ModelCache(LIN, policy=policy)
    told: list[Any] = []
    a = cache.get(key("a"), linear, on_evict=told.append)
    cache.get(key("b"), linear, on_evict=lambda obj: 1 / 0)  # a failing callback is logged
    assert told == [a]
    assert cache.unload(key("b")) and cache.stats()["unloads"] == 1


# -- stats and memory ------------------------------------------------------------------------


def test_stats_are_json_and_track_the_high_water_mark():
    cache = ModelCache(2 * LIN, name="vram")
    with cache.use(key("a"), linear):
        cache.get(key("b"), linear)
        cache.get(key("c"), linear)
    cache.unload(key("c"))
    stats = json.loads(json.dumps(cache.stats()))
    assert stats == cache.stats()
    assert stats["name"] == "vram" and stats["budget_bytes"] == 2 * LIN
    assert stats["policy"] == "lru"
    assert stats["high_water_bytes"] == 3 * LIN >= stats["bytes_in_use"] == LIN
    (entry,) = stats["entries"]
    assert entry["path"] == "/models/a" and entry["dtype"] == "torch.float32"
    assert entry["tier"] == "vram"
    assert set(entry) == {"path", "dtype", "device", "variant", "tier", "size_bytes"} | {
        "last_used",
        "locks",
        "load_s",
        "cost_s",
    }
    assert entry["cost_s"] == entry["load_s"] >= 0, "no cost given: the measured load time"
    assert abs(entry["last_used"] - time.time()) < 60


RSS_SCRIPT = textwrap.dedent(
    """
    import json, psutil, torch
    from worker.cache import CacheKey, ModelCache

    MB = 2**20
    rss = lambda: psutil.Process().memory_info().rss // MB

    def model():  # 100 MB of float32 weights in 4 MB tensors
        return torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(25)])

    cache = ModelCache(150 * MB)  # room for one model: every load evicts the previous one
    start, after = rss(), []
    for cycle in range(5):
        for i in range(3):
            cache.get(CacheKey.of(f"/models/big-{i}", "float32", "cpu"), model)
        cache.clear()
        after.append(rss())
    print(json.dumps({"start_mb": start, "after_cycle_mb": after, **cache.stats()}))
    """
)


def test_memory_really_comes_back_after_evict_and_unload():
    """Fresh interpreter: load and evict 15 × 100 MB through the cache; RSS must not grow."""
    done = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    start, after = result["start_mb"], result["after_cycle_mb"]
    print(f"RSS MB: start {start}, after each cycle {after}")
    assert (result["loads"], result["evictions"], result["unloads"]) == (15, 10, 5)
    assert result["bytes_in_use"] == 0
    assert after[0] - start < 50, "the first cycle gave its memory back"
    assert max(after) - after[0] < 30, "no growth across cycles"
    assert after[-1] - after[0] < 30
