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

from worker.cache import CacheKey, EntryLocked, ModelCache
from worker.memory import measure_bytes, tensors

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
LIN = (256 * 256 + 256) * 4  # bytes of a float32 Linear(256, 256): weight + bias


def key(name: str, variant: str = "") -> CacheKey:
    return CacheKey.of(f"/models/{name}", torch.float32, "cpu", variant)


def linear() -> torch.nn.Linear:
    return torch.nn.Linear(256, 256)


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
    cache = ModelCache(3 * LIN)
    for name in "abc":
        cache.get(key(name), linear)
    cache.get(key("a"), linear)  # a is now the most recent
    cache.get(key("d"), linear)
    assert cache.keys() == [key("c"), key("a"), key("d")]
    assert cache.stats()["evictions"] == 1


def test_budget_holds_and_trims_after_a_load_without_size_hint():
    cache = ModelCache(2 * LIN)
    for name in "abcde":
        cache.get(key(name), linear)
        assert cache.bytes_in_use <= 2 * LIN
    stats = cache.stats()
    assert stats["evictions"] == 3 and cache.keys() == [key("d"), key("e")]
    assert stats["high_water_bytes"] == 3 * LIN, "loaded first, then trimmed"


def test_size_hint_makes_room_before_loading():
    cache = ModelCache(LIN)
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


def test_locked_entry_is_never_evicted_even_over_budget():
    cache = ModelCache(LIN)
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


def test_lock_is_reentrant_and_released_on_exception():
    cache = ModelCache(LIN)
    with pytest.raises(ValueError), cache.use(key("a"), linear):
        with cache.use(key("a"), linear):
            assert cache.stats()["entries"][0]["locks"] == 2
        assert cache.stats()["entries"][0]["locks"] == 1
        raise ValueError("the job failed")
    assert cache.stats()["entries"][0]["locks"] == 0
    cache.get(key("b"), linear)
    assert cache.keys() == [key("b")], "a is evictable again"


def test_releasing_a_lock_shrinks_an_over_budget_cache():
    cache = ModelCache(LIN)
    with cache.use(key("a"), linear), cache.use(key("b"), linear):
        assert cache.bytes_in_use == 2 * LIN
    assert cache.bytes_in_use == LIN and len(cache) == 1


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

    cache = ModelCache(size)  # room for this model alone
    weights, _ = watch(family, cache.get(key(family), loader))
    cache.get(key("next"), lambda: torch.nn.Linear(4, 4))
    assert key(family) not in cache and cache.stats()["evictions"] == 1
    assert all(w() is None for w in weights), "evicted weights are freed"


def test_on_evict_is_told_on_eviction_and_unload():
    cache = ModelCache(LIN)
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
    assert stats["high_water_bytes"] == 3 * LIN >= stats["bytes_in_use"] == LIN
    (entry,) = stats["entries"]
    assert entry["path"] == "/models/a" and entry["dtype"] == "torch.float32"
    assert entry["tier"] == "vram"
    assert set(entry) == {"path", "dtype", "device", "variant", "tier", "size_bytes"} | {
        "last_used",
        "locks",
        "load_s",
    }
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
