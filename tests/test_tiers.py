"""A GPU worker's cache tiers (VRAM backed by RAM) and CPU offload, with real diffusers models.

CI has no GPU: the tier logic runs here with the CPU standing in for the GPU (a move between
tiers is then a no-op, but what is loaded from disk, which tier holds what, budgets and
offload hooks are all real). The tests at the end run the same on a CUDA device when one is
present and skip otherwise.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.config import Settings
from shared.jobspec import parse_spec
from shared.modelstore import LocalModelStore
from worker import pipelines
from worker.cache import CacheKey, ModelCache
from worker.memory import measure_bytes
from worker.tiers import OFFLOAD, TieredCache

JOB = {"model": "demo-sd15", "prompt": "a lighthouse", "steps": 3, "seed": 11}
CUDA = torch.cuda.is_available()


class DiskLoads:
    """Loaders that read checkpoints from the model store, counting each read from disk."""

    def __init__(self, models_dir: Path, dtype: torch.dtype = torch.float32) -> None:
        self.models_dir = models_dir
        self.dtype = dtype
        self.count: Counter[str] = Counter()

    def key(self, name: str, device: str = "cpu") -> CacheKey:
        return CacheKey.of(self.models_dir / "checkpoints" / name, self.dtype, device)

    def loader(self, name: str):
        def load() -> pipelines.LoadedPipeline:
            self.count[name] += 1
            model = LocalModelStore(self.models_dir).find(name, "checkpoint")
            return pipelines.load_pipeline(model, "cpu", self.dtype)

        return load

    def size(self, name: str) -> int:
        return LocalModelStore(self.models_dir).find(name, "checkpoint").size_bytes


def render(loaded: pipelines.LoadedPipeline, **fields) -> np.ndarray:
    spec = parse_spec({**JOB, "width": 64, "height": 64, **fields}, Settings())
    images, _ = pipelines.txt2img(loaded, spec, pipelines.Addons(), lambda p: None)
    return images


def names(cache: ModelCache) -> list[str]:
    return [Path(e["path"]).name for e in cache.stats()["entries"]]


@pytest.fixture
def disk(models_dir) -> DiskLoads:
    return DiskLoads(models_dir)


def tiers(
    vram_bytes: int, ram_bytes: int = 2**40, device: str = "cpu", policy: str = "cost", **kw
) -> TieredCache:
    """Both tiers with the worker's default eviction policy unless told otherwise."""
    fast = ModelCache(vram_bytes, name=device, policy=policy)
    return TieredCache(fast, ModelCache(ram_bytes, policy=policy), device, **kw)


@pytest.mark.parametrize("policy", ["cost", "lru"])
def test_a_model_leaving_vram_waits_in_ram_and_comes_back_without_the_disk(disk, policy):
    sizes = [measure_bytes(disk.loader(name)()) for name in ("demo-sd15", "demo-sdxl")]
    cache = tiers(vram_bytes=max(sizes), policy=policy)  # room for either, not for both
    with cache.use(disk.key("demo-sd15"), disk.loader("demo-sd15")) as loaded:
        first = render(loaded)
    with cache.use(disk.key("demo-sdxl"), disk.loader("demo-sdxl")):
        pass
    assert names(cache.fast) == ["demo-sdxl"] and names(cache.slow) == ["demo-sd15"]

    with cache.use(disk.key("demo-sd15"), disk.loader("demo-sd15")) as loaded:
        again = render(loaded)
    assert names(cache.fast) == ["demo-sd15"] and names(cache.slow) == ["demo-sdxl"]
    assert disk.count == {"demo-sd15": 2, "demo-sdxl": 2}  # measuring + 1 load: no reload
    assert np.array_equal(first, again)  # the weights survived both moves
    assert cache.fast.bytes_in_use <= cache.fast.budget_bytes


def test_ram_has_its_own_budget_and_eviction_from_ram_is_final(disk):
    sd15 = measure_bytes(disk.loader("demo-sd15")())
    assert measure_bytes(disk.loader("demo-sdxl")()) > sd15
    cache = tiers(vram_bytes=sd15, ram_bytes=sd15)
    left: list[str] = []
    for name in ("demo-sd15", "demo-sdxl", "demo-sd15", "demo-sdxl"):
        on_evict = lambda value, name=name: left.append(name)  # noqa: E731
        with cache.use(disk.key(name), disk.loader(name), on_evict=on_evict):
            pass
    # demo-sdxl (larger than RAM's budget) is dropped each time it leaves VRAM, and told so;
    # demo-sd15 waits in RAM and never leaves the cache.
    assert left == ["demo-sdxl", "demo-sdxl"]
    assert disk.count["demo-sd15"] == 2  # measuring + one load, then always from RAM
    assert disk.count["demo-sdxl"] == 3  # measuring + twice: nowhere to wait, read again
    assert cache.slow.bytes_in_use <= cache.slow.budget_bytes


def test_ram_weighs_a_waiting_model_by_its_disk_load_not_the_move(disk):
    """Dropped from RAM, a model comes from disk again: that is what RAM's policy weighs."""
    disk_s = 0.05

    def slow_disk(name: str):
        load = disk.loader(name)
        return lambda: (time.sleep(disk_s), load())[1]

    sizes = [measure_bytes(disk.loader(name)()) for name in ("demo-sd15", "demo-sdxl")]
    cache = tiers(vram_bytes=max(sizes))
    for name in ("demo-sd15", "demo-sdxl"):
        with cache.use(disk.key(name), slow_disk(name)):
            pass
    (vram,) = cache.fast.stats()["entries"]
    (ram,) = cache.slow.stats()["entries"]
    assert Path(ram["path"]).name == "demo-sd15"
    assert ram["cost_s"] >= disk_s, "its load from disk, not the move that demoted it"
    assert ram["load_s"] != ram["cost_s"]
    assert vram["cost_s"] == vram["load_s"] >= disk_s, "VRAM: what its promotion took"

    with cache.use(disk.key("demo-sd15"), slow_disk("demo-sd15")):
        pass  # back from RAM, no disk read; demo-sdxl waits in RAM now
    (ram,) = cache.slow.stats()["entries"]
    assert Path(ram["path"]).name == "demo-sdxl" and ram["cost_s"] >= disk_s
    assert cache.unload(disk.key("demo-sdxl")) and cache.unload(disk.key("demo-sd15"))
    assert cache._disk_s == {}, "a disk time is kept only while its model is in a tier"


def test_unload_and_clear_across_tiers(disk):
    cache = tiers(vram_bytes=2**40)
    with cache.use(disk.key("demo-sd15"), disk.loader("demo-sd15")):
        pass
    with cache.use(disk.key("demo-sdxl"), disk.loader("demo-sdxl")):
        pass
    assert cache.clear() == 2  # VRAM freed: both wait in RAM
    assert names(cache.fast) == [] and sorted(names(cache.slow)) == ["demo-sd15", "demo-sdxl"]
    assert cache.unload(disk.key("demo-sd15"))
    assert names(cache.slow) == ["demo-sdxl"]
    assert not cache.unload(disk.key("demo-sd15"))
    stats = cache.stats()
    assert stats["ram"]["bytes_in_use"] == cache.slow.bytes_in_use
    assert [e["tier"] for e in stats["entries"]] == ["ram"]


def test_a_checkpoint_larger_than_vram_runs_with_cpu_offload(disk):
    plain = render(disk.loader("demo-sd15")())
    cache = tiers(vram_bytes=disk.size("demo-sd15") // 2)  # the whole model does not fit
    with cache.use(disk.key("demo-sdxl"), disk.loader("demo-sdxl")):
        pass  # something in VRAM, which the offloaded job will need room for
    key = disk.key("demo-sd15")
    for _ in range(2):
        with cache.use(key, disk.loader("demo-sd15"), size_hint=disk.size("demo-sd15")) as loaded:
            assert all(
                hasattr(module, "_hf_hook")
                for module in (loaded.pipe.unet, loaded.pipe.vae, loaded.pipe.text_encoder)
            ), "components move to the device as they run"
            assert names(cache.fast) == []  # VRAM cleared for the offloaded components
            image = render(loaded)
        assert np.array_equal(image, plain)
    assert disk.count["demo-sd15"] == 2  # one for `plain`, one for the cache: kept in RAM
    assert [e["variant"] for e in cache.slow.stats()["entries"]].count(OFFLOAD) == 1


def test_offload_never_and_always(disk):
    size = disk.size("demo-sd15")
    never = tiers(vram_bytes=size // 2, offload="never")
    with never.use(disk.key("demo-sd15"), disk.loader("demo-sd15"), size_hint=size):
        assert names(never.fast) == ["demo-sd15"]  # over the budget: an OOM would follow
    always = tiers(vram_bytes=2**40, offload="always")
    with always.use(disk.key("demo-sd15"), disk.loader("demo-sd15"), size_hint=size):
        assert [e["variant"] for e in always.slow.stats()["entries"]] == [OFFLOAD]


# -- on a real GPU --------------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_tiers_move_weights_and_render_in_half_precision(models_dir):
    disk = DiskLoads(models_dir, torch.float16)
    reference = render(DiskLoads(models_dir).loader("demo-sd15")())  # fp32 on the CPU
    cache = tiers(vram_bytes=2**40, device="cuda:0")
    key = disk.key("demo-sd15", "cuda:0")
    with cache.use(key, disk.loader("demo-sd15")) as loaded:
        assert loaded.pipe.unet.device.type == "cuda" and loaded.pipe.unet.dtype == torch.float16
        image = render(loaded)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    assert np.abs(image - reference).mean() < 0.05  # fp16 vs fp32: close, not equal
    cache.clear()
    (host,) = cache.slow.keys()
    with cache.slow.use(host, lambda: None) as waiting:
        assert waiting.pipe.unet.device.type == "cpu"  # the VRAM is free again


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_cpu_offload_renders_like_the_gpu(models_dir):
    disk = DiskLoads(models_dir, torch.float16)
    on_gpu = tiers(vram_bytes=2**40, device="cuda:0")
    offload = tiers(vram_bytes=2**40, device="cuda:0", offload="always")
    key = disk.key("demo-sd15", "cuda:0")
    with on_gpu.use(key, disk.loader("demo-sd15")) as loaded:
        expected = render(loaded)
    with offload.use(key, disk.loader("demo-sd15")) as loaded:
        image = render(loaded)
    assert np.abs(image - expected).max() < 1e-2
