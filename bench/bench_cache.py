"""Model cache benchmark: switch latency per model family, and eviction policies on a Zipf
job trace.

    .venv/bin/python -m bench.bench_cache [--jobs 200] [--models 8] [--capacities 3,4,5]
        [--json PATH] [--big]

(1) Switch latency. For each model (demo-sd15, demo-sdxl, a VAE, the ControlNet, three
    upscaler families, and a mid-size SD1.5-layout checkpoint built here) through a real
    `worker.cache.ModelCache` with the worker's own loaders and cache keys:
    - cold, page cache warm: `unload`, then `with cache.use(key, loader)` (a miss: the
      loader opens the files, which the OS still holds in its page cache);
    - cold, page cache dropped: `unload`, the model's files evicted from the page cache with
      posix_fadvise(DONTNEED) (checked with mincore), then the same miss;
    - after each cold load, reading every weight page once (+read): float32 safetensors
      stay memory-mapped on the CPU, so the bytes come in on first use, not at load;
    - warm: `with cache.use(key, loader)` on a cached key (a hit; the loader is not called);
    - unload: `cache.unload` (drop + release_memory, a full gc.collect()).
    Medians over --repeats rounds (models in rotating order each round); the first load of
    each model in this process (imports, lazy initialisation) is reported, never counted.
(2) Trace. --models SD-layout checkpoints of different sizes (SD1.5 layouts with 1x, 2x
    and 4x UNet width, and SDXL copies) are written to a temp model store, each with its own
    seed. A --jobs long trace draws model names with Zipf popularity (exponent --zipf-s,
    seeded; which model gets which popularity rank is a seeded shuffle). For each budget of
    --capacities (N x the mean measured size, at least the largest model), the trace is
    replayed through a real ModelCache with `load_pipeline` (no rendering:
    `with cache.use(key, loader): pass` per job; with --size-hint, `size_hint=` the size
    on disk, as the runner calls it), --trace-repeats times with a fresh cache, for each
    eviction policy (`lru`,
    `cost`: worker.eviction). Compared, on the same trace and the same measured sizes: the
    compulsory misses (one per distinct model: a true lower bound) and Belady's offline
    policy (evict the entry whose next use is farthest away; optimal for equal sizes, a
    heuristic with unequal sizes). An offline simulation of each policy, fed the reload
    costs the real cache measured in that replay, must give exactly its loads and
    evictions (checked, every replay). Reload seconds: the misses' load_s as measured, and
    an estimate for every policy at the per-model median load_s. The "what if" table
    simulates every budget from 1 to N models; the variant table compares, simulated over
    --variant-seeds traces, what the cost policy does with an evicted model's use count.

Nothing is downloaded: every model is generated with random weights into a temp dir, which
is removed on exit (Ctrl-C and SIGTERM included) unless --keep.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import mmap
import os
import platform
import random
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    MIB,
    config,
    loadavg,
    log,
    machine_info,
    machine_line,
    parser,
    quiet_libraries,
    run_dir,
    versions_line,
    write_json,
    write_model,
)
from worker.eviction import EVICTED_USES_KEPT, MIN_COST_S, MIN_SIZE_BYTES

DEVICE = "cpu"
POLICIES = ("lru", "cost")  # the real cache's eviction policies (worker.eviction)


# ---------------------------------------------------------------------------- figures


def median_ms(values_s: list[float]) -> float:
    return statistics.median(values_s) * 1000


def spread_ms(values_s: list[float]) -> dict[str, Any]:
    ms = sorted(v * 1000 for v in values_s)
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "samples_ms": [round(v, 4) for v in ms],
    }


def versions() -> dict[str, str]:
    import diffusers
    import safetensors
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }


# ---------------------------------------------------------------------------- models


def build_sd15_layout(
    out: Path,
    seed: int,
    unet: dict[str, Any],
    text: dict[str, Any],
    vae: dict[str, Any] | None = None,
) -> None:
    """An SD1.5-layout pipeline folder with random weights, at any component sizes.

    The tokenizer is the demo models' generated CLIP vocabulary (a few hundred tokens, so
    the token embedding is much smaller than a real CLIP's 49408 x 768).
    """
    from worker.demo_models import build_sd15

    build_sd15(out, seed, unet=unet, text=text, vae=vae)


from worker.demo_models import TINY_TEXT  # noqa: E402

SD15_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD15_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3


def sd15_unet(channels: tuple[int, ...]) -> dict[str, Any]:
    """The real SD1.5 UNet's structure (4 levels, 2 layers per block, 768-d text) at any width."""
    return dict(
        block_out_channels=channels,
        layers_per_block=2,
        in_channels=4,
        out_channels=4,
        down_block_types=SD15_DOWN,
        up_block_types=SD15_UP,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        sample_size=64,
    )


def build_demo_width(width: int) -> Callable[[Path, int], None]:
    """demo-sd15's layout with the UNet `width` times wider (UNet bytes grow ~width^2)."""
    from worker.demo_models import SD15_UNET

    unet = {**SD15_UNET, "block_out_channels": (32 * width, 64 * width)}

    def build(out: Path, seed: int) -> None:
        build_sd15_layout(out, seed, unet, TINY_TEXT)

    return build


def build_mid(out: Path, seed: int = 7) -> None:
    """The real SD1.5 UNet structure at 1/5 of its width (~150 MB of UNet weights), a
    768-wide 2-layer text encoder and the tiny demo VAE: ~170 MB in float32."""
    text = dict(hidden_size=768, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    build_sd15_layout(out, seed, sd15_unet((64, 128, 256, 256)), text)


def build_full(out: Path, seed: int = 8) -> None:
    """The real SD1.5 configs at random weights: UNet (860M parameters), VAE (84M), CLIP
    ViT-L/14 text encoder (12 layers, but the small generated vocabulary): ~4 GB float32."""
    text = dict(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    vae = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    build_sd15_layout(out, seed, sd15_unet((320, 640, 1280, 1280)), text, vae)


def trace_variants(n: int) -> list[tuple[str, Callable[[Path], None]]]:
    """n checkpoints of a few sizes: SD1.5 layouts at 1x, 2x, 4x UNet width, and SDXL."""
    from worker.demo_models import build_sdxl

    widths = (1, 2, 4)
    variants = []
    for i in range(n):
        if i % 4 == 3:
            variants.append((f"trace-{i:02d}-sdxl", lambda out, s=100 + i: build_sdxl(out, seed=s)))
        else:
            w = widths[i % 4]
            build = build_demo_width(w)
            variants.append((f"trace-{i:02d}-sd15-w{w}", lambda out, s=100 + i, b=build: b(out, s)))
    return variants


# ---------------------------------------------------------------------------- cache plumbing


@dataclass
class Target:
    """A model of the store, with its cache key and the worker's loader for its family."""

    label: str
    info: Any  # shared.modelstore.ModelInfo
    key: Any  # worker.cache.CacheKey
    loader: Callable[[], Any]

    @classmethod
    def of(cls, label: str, name: str, family: str, models_dir: Path) -> Target:
        import torch

        from shared.modelstore import LocalModelStore
        from worker import pipelines
        from worker.cache import CacheKey
        from worker.upscalers import load_upscaler

        loaders = {
            "checkpoint": pipelines.load_pipeline,
            "vae": pipelines.load_vae,
            "controlnet": pipelines.load_controlnet,
            "upscaler": load_upscaler,
        }
        info = LocalModelStore(models_dir).find(name, family)
        if info is None:
            raise RuntimeError(f"{family} {name!r} is not in {models_dir}")
        dtype = torch.float32
        # The same key and loader call as worker.runner.JobRunner._use.
        key = CacheKey.of(info.path, str(dtype), DEVICE)
        load = loaders[family]
        return cls(label, info, key, lambda: load(info, DEVICE, dtype))


def files_of(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def drop_page_cache(path: Path) -> None:
    """Ask the kernel to drop a model's files from the page cache (no root needed; the files
    are clean, so DONTNEED evicts them). The next read comes from the disk device."""
    for f in files_of(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed_use(cache: Any, target: Target, size_hint: bool = False) -> tuple[float, bool]:
    """Seconds for one job's `with cache.use(...)` (acquire + release), and whether it hit.
    `size_hint`: pass the size on disk, as the runner does."""
    hit = target.key in cache
    hint = target.info.size_bytes if size_hint else None
    started = time.perf_counter()
    with cache.use(target.key, target.loader, size_hint=hint):
        pass
    return time.perf_counter() - started, hit


# ---------------------------------------------------------------------------- (1) switch latency


def resident_fraction(path: Path) -> float | None:
    """Share of a model's file pages in the OS page cache (mincore(2)); None if unknown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
        resident = total = 0
        for f in files_of(path):
            size = f.stat().st_size
            if size == 0:
                continue
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            with open(f, "rb") as fh, mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY) as mm:
                buf = (ctypes.c_char * size).from_buffer(mm)  # private, never written
                try:
                    if libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), size, vec) != 0:
                        return None
                finally:
                    del buf
            resident += sum(v & 1 for v in vec)
            total += pages
        return resident / total if total else None
    except (OSError, AttributeError, ValueError):
        return None


def touch_weights(obj: Any) -> None:
    """Read one element per memory page of every weight (a forward pass reads them all).

    diffusers/safetensors leave float32 weights memory-mapped from the model files on the
    CPU, so a "load" maps the files and the pages come in on first use: this is that cost.
    """
    import torch

    from worker.memory import tensors

    page = os.sysconf("SC_PAGE_SIZE")
    with torch.no_grad():
        for t in tensors(obj):
            if t.device.type == "cpu" and t.numel():
                t.detach().reshape(-1)[:: max(1, page // t.element_size())].sum()


def cold_use(cache: Any, target: Target) -> tuple[float, float]:
    """A miss through the cache, then the first read of every weight page: (load s, read s)."""
    assert target.key not in cache
    started = time.perf_counter()
    with cache.use(target.key, target.loader) as obj:
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        touch_weights(obj)
        read_s = time.perf_counter() - started
    return load_s, read_s


def switch_latency(
    targets: list[Target], repeats: int, lookups: int, caps: dict[str, int]
) -> list[dict[str, Any]]:
    """Per model: first load, cold (page cache warm / dropped), unload and warm-hit times.

    `caps`: fewer rounds for some models (label -> rounds), e.g. a multi-GB checkpoint.
    """
    from worker.cache import ModelCache

    cache = ModelCache(2**62, name="switch")  # never evicts: only unload drops entries
    rows: dict[str, dict[str, Any]] = {}
    for t in targets:
        first_s, _ = cold_use(cache, t)
        size = next(e["size_bytes"] for e in cache.stats()["entries"] if e["path"] == t.key.path)
        cache.unload(t.key)
        rows[t.label] = {
            "model": t.info.name,
            "family": t.info.family,
            "kind": t.info.kind,
            "disk_bytes": t.info.size_bytes,
            "cache_bytes": size,
            "first_load_s": first_s,
            **{k: [] for k in ("page", "page_read", "disk", "disk_read", "unload", "warm")},
            "resident_before_page": [],
            "resident_before_disk": [],
        }

    for r in range(repeats):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        for t in order:
            row = rows[t.label]
            if r >= caps.get(t.label, repeats):
                continue
            # Cold, page cache warm: the files were read by the previous load.
            row["resident_before_page"].append(resident_fraction(t.info.path))
            load_s, read_s = cold_use(cache, t)
            row["page"].append(load_s)
            row["page_read"].append(read_s)
            started = time.perf_counter()
            cache.unload(t.key)
            row["unload"].append(time.perf_counter() - started)
            # Cold, page cache dropped (the unload above also unmapped the files).
            drop_page_cache(t.info.path)
            row["resident_before_disk"].append(resident_fraction(t.info.path))
            load_s, read_s = cold_use(cache, t)
            row["disk"].append(load_s)
            row["disk_read"].append(read_s)
            # Warm: hits, each timed on its own.
            for _ in range(lookups):
                dt, hit = timed_use(cache, t)
                assert hit
                row["warm"].append(dt)
            cache.unload(t.key)
    stats = cache.stats()
    expected_misses = len(targets) + sum(len(r["page"]) + len(r["disk"]) for r in rows.values())
    assert stats["misses"] == stats["loads"] == expected_misses, stats
    return [{"label": label, **row} for label, row in rows.items()]


# ---------------------------------------------------------------------------- (2) trace


def zipf_trace(n_models: int, jobs: int, s: float, seed: int) -> tuple[list[int], list[int]]:
    """`jobs` model indices; P(rank k) ~ 1/k^s. Returns the trace and each model's rank."""
    rng = random.Random(seed)
    ranks = list(range(1, n_models + 1))
    rng.shuffle(ranks)  # popularity independent of size
    weights = [1 / ranks[i] ** s for i in range(n_models)]
    return rng.choices(range(n_models), weights=weights, k=jobs), ranks


class Simulation:
    """A trace replayed offline with the real cache's semantics, for one eviction policy.

    Per job, as `with cache.use(key, loader, size_hint=hint): pass` does: on a miss, entries
    are evicted until the hint fits, the model is loaded, entries other than it are evicted
    until the total fits; after the job (it let go) the cache shrinks to the budget if it
    can. A hit and a release make the entry the most recent.

    policy "lru": least recently used first (worker.eviction.LeastRecentlyUsed).
    policy "cost": GreedyDual-Size-Frequency as worker.eviction.CostAware does it, written
    again here: priority clock + uses x cost / size, set at a load (after the load's
    evictions) and at each hit and release; the lowest goes (ties: the least recent) and the
    clock rises to its priority; an evicted model keeps `kept` x its uses (the policy: 0.5).
    `cost(model, n)`: the reload seconds of the n-th load (the real cache's measured ones, to
    check, or a per-model figure for "what if").
    policy "belady": the entry whose next use is farthest away first (never used again =
    infinitely far; ties: the larger first). Optimal for equal sizes; with unequal sizes the
    optimum is NP-hard and this is a heuristic, not a bound.
    """

    def __init__(
        self,
        sizes: list[int],
        hints: list[int],
        budget: int,
        policy: str,
        cost: Callable[[int, int], float] | None = None,
        kept: float = EVICTED_USES_KEPT,
    ) -> None:
        if policy == "cost" and cost is None:
            raise ValueError("the cost policy needs the reload cost of each load")
        self.sizes, self.hints, self.budget, self.policy = sizes, hints, budget, policy
        self.cost, self.kept = cost, kept
        self.cached: OrderedDict[int, None] = OrderedDict()  # least recent first
        self.next_use: dict[int, int] = {}  # belady: each cached model's next use
        self.clock = 0.0
        self.uses: dict[int, float] = {}  # cost: cached and remembered models
        self.entry_cost: dict[int, float] = {}
        self.priority: dict[int, float] = {}
        self.used = self.peak = self.loads = self.evictions = 0
        self.loads_per_model: dict[int, int] = {}

    def run(self, trace: list[int]) -> dict[str, Any]:
        never = len(trace)
        next_use = [never] * len(trace)
        seen: dict[int, int] = {}
        for i in range(len(trace) - 1, -1, -1):
            next_use[i] = seen.get(trace[i], never)
            seen[trace[i]] = i
        for i, m in enumerate(trace):
            self.next_use[m] = next_use[i]
            if m in self.cached:
                self.cached.move_to_end(m)
                if self.policy == "cost":
                    self.uses[m] += 1
                    self._rank(m)
            else:
                self._load(m)
            self.cached.move_to_end(m)  # the job let go
            if self.policy == "cost":
                self._rank(m)
            self._shrink(0, protect=None)
        return {
            "policy": self.policy,
            "loads": self.loads,
            "hits": len(trace) - self.loads,
            "hit_rate": (len(trace) - self.loads) / len(trace),
            "evictions": self.evictions,
            "peak_bytes": self.peak,
            "loads_per_model": self.loads_per_model,
        }

    def _load(self, m: int) -> None:
        self._shrink(self.hints[m], protect=None)
        self.loads_per_model[m] = self.loads_per_model.get(m, 0) + 1
        self.loads += 1
        self.cached[m] = None
        self.used += self.sizes[m]
        self.peak = max(self.peak, self.used)
        self._shrink(0, protect=m)
        if self.policy == "cost":
            assert self.cost is not None
            self.uses[m] = self.uses.get(m, 0.0) + 1
            self.entry_cost[m] = max(self.cost(m, self.loads - 1), MIN_COST_S)
            self._rank(m)

    def _rank(self, m: int) -> None:
        size = max(self.sizes[m], MIN_SIZE_BYTES)
        self.priority[m] = self.clock + self.uses[m] * self.entry_cost[m] / size

    def _victim(self, protect: int | None) -> int | None:
        candidates = [m for m in self.cached if m != protect]
        if not candidates:
            return None
        if self.policy == "lru":
            return candidates[0]
        if self.policy == "cost":
            return min(candidates, key=lambda m: self.priority[m])
        return max(candidates, key=lambda m: (self.next_use[m], self.sizes[m]))

    def _shrink(self, incoming: int, protect: int | None) -> None:
        while self.used + incoming > self.budget and (v := self._victim(protect)) is not None:
            del self.cached[v]
            self.used -= self.sizes[v]
            self.evictions += 1
            if self.policy == "cost":
                self.clock = max(self.clock, self.priority.pop(v))
                self.uses[v] *= self.kept


def simulate(
    trace: list[int],
    sizes: list[int],
    hints: list[int],
    budget: int,
    policy: str,
    cost: Callable[[int, int], float] | None = None,
    kept: float = EVICTED_USES_KEPT,
) -> dict[str, Any]:
    """One offline replay (see `Simulation`)."""
    return Simulation(sizes, hints, budget, policy, cost, kept).run(trace)


def measured_costs(costs: list[float]) -> Callable[[int, int], float]:
    """The n-th load's cost as the real cache measured it; past the end (the simulation
    loads more than the real cache did) infinity, which makes the check fail."""
    return lambda m, n: costs[n] if n < len(costs) else float("inf")


@contextmanager
def timing_release_memory() -> Iterator[list[float]]:
    """Time each `release_memory()` the cache runs after dropping entries (it still runs)."""
    import worker.cache

    original = worker.cache.release_memory
    durations: list[float] = []

    def timed() -> None:
        started = time.perf_counter()
        original()
        durations.append(time.perf_counter() - started)

    worker.cache.release_memory = timed
    try:
        yield durations
    finally:
        worker.cache.release_memory = original


def gc_cost(rounds: int = 5) -> dict[str, Any]:
    """What one full `gc.collect()` costs in this process (release_memory runs one)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - started)
    return {"tracked_objects": len(gc.get_objects()), "modules": len(sys.modules)} | spread_ms(
        times
    )


def replay(
    targets: list[Target], trace: list[int], budget: int, policy: str, size_hint: bool
) -> dict[str, Any]:
    """The trace through a real ModelCache with `policy`: per job its time and whether it
    hit; per load (in order) the size and reload cost the cache recorded for the entry."""
    from worker.cache import ModelCache

    cache = ModelCache(budget, name="trace", policy=policy)
    times: list[float] = []
    hits: list[bool] = []
    costs: list[float] = []
    sizes: list[int] = []
    with timing_release_memory() as releases:
        for m in trace:
            dt, hit = timed_use(cache, targets[m], size_hint)
            times.append(dt)
            hits.append(hit)
            if not hit:
                path = targets[m].key.path
                (entry,) = (e for e in cache.stats()["entries"] if e["path"] == path)
                costs.append(entry["cost_s"])
                sizes.append(entry["size_bytes"])
    stats = cache.stats()
    cache.clear()
    return {
        "stats": stats,
        "times": times,
        "hits": hits,
        "costs": costs,
        "sizes": sizes,
        "releases": releases,
    }


def trace_budget(capacity: float, sizes: list[int]) -> int:
    """Room for about `capacity` models of mean size, and at least for the largest."""
    return max(int(capacity * statistics.fmean(sizes)), max(sizes))


def summarise_real(runs: list[dict[str, Any]], trace: list[int]) -> dict[str, Any]:
    """A policy's replays through the real cache: loads per replay, medians of the rest."""

    def missed(r: dict[str, Any]) -> list[float]:
        return [dt for dt, h in zip(r["times"], r["hits"], strict=True) if not h]

    stats = [r["stats"] for r in runs]
    loads = [s["loads"] for s in stats]
    for s, r in zip(stats, runs, strict=True):
        assert s["hits"] == sum(r["hits"]) and s["misses"] == s["loads"] == len(r["costs"])
    hit_times = [dt for r in runs for dt, h in zip(r["times"], r["hits"], strict=True) if h]
    return {
        "loads_per_replay": loads,
        "loads": statistics.median(loads),
        "hits": len(trace) - statistics.median(loads),
        "hit_rate": 1 - statistics.median(loads) / len(trace),
        "evictions": statistics.median(s["evictions"] for s in stats),
        "high_water_bytes": max(s["high_water_bytes"] for s in stats),
        "over_budget_events": max(s["over_budget_events"] for s in stats),
        # What the misses' loads took (the entries' load_s), and whole jobs that missed
        # (load, measuring, the evictions and their gc.collect()).
        "reload_s": statistics.median(sum(r["costs"]) for r in runs),
        "miss_jobs_s": statistics.median(sum(missed(r)) for r in runs),
        "release_memory_calls": statistics.median(len(r["releases"]) for r in runs),
        "release_memory_s": statistics.median(sum(r["releases"]) for r in runs),
        "replay_wall_s": statistics.median(sum(r["times"]) for r in runs),
        "hit_ms": spread_ms(hit_times) | {"samples_ms": None},
        "loads_per_model_first_replay": [
            sum(1 for x, h in zip(trace, runs[0]["hits"], strict=True) if x == m and not h)
            for m in range(max(trace) + 1)
        ],
    }


def variant_study(
    n_models: int,
    sizes: list[int],
    hints: list[int],
    cost: Callable[[int, int], float],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Loads / Belady's, simulated over --variant-seeds traces at each budget: LRU, and the
    cost policy with an evicted model's use count halved (the policy), kept or forgotten."""
    variants = {"lru": ("lru", 1.0), "halved": ("cost", 0.5)}
    variants |= {"kept": ("cost", 1.0), "forgotten": ("cost", 0.0)}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    for seed in range(args.variant_seeds):
        trace, _ = zipf_trace(n_models, args.jobs, args.zipf_s, seed)
        for capacity in args.capacities:
            budget = trace_budget(capacity, sizes)
            belady = simulate(trace, sizes, hints, budget, "belady")["loads"]
            for name, (policy, kept) in variants.items():
                loads = simulate(trace, sizes, hints, budget, policy, cost, kept)["loads"]
                ratios[name].append(loads / belady)
    return {
        "seeds": args.variant_seeds,
        "capacities": args.capacities,
        "over_belady": {
            name: {
                "geomean": statistics.geometric_mean(r),
                "max": max(r),
                "worse_than_lru": sum(x > lru for x, lru in zip(r, ratios["lru"], strict=True)),
            }
            for name, r in ratios.items()
        },
    }


def run_trace(targets: list[Target], args: argparse.Namespace) -> dict[str, Any]:
    from worker.memory import measure_bytes, release_memory

    # Sizes, measured from the loaded weights as the cache measures them (also warms up
    # imports and the page cache for every model).
    sizes, first_load_s = [], []
    for t in targets:
        started = time.perf_counter()
        obj = t.loader()
        first_load_s.append(time.perf_counter() - started)
        sizes.append(measure_bytes(obj))
        del obj
        release_memory()
    # What the runner passes as size_hint: the size on disk (a little more than the weights).
    hints = [t.info.size_bytes if args.size_hint else 0 for t in targets]
    trace, ranks = zipf_trace(len(targets), args.jobs, args.zipf_s, args.seed)
    compulsory = len(set(trace))

    budgets: list[dict[str, Any]] = []
    load_times: dict[int, list[float]] = {}  # model -> every load_s the real caches measured
    for capacity in args.capacities:
        budget = trace_budget(capacity, sizes)
        row: dict[str, Any] = {"capacity": capacity, "budget_bytes": budget, "real": {}}
        row["sim_matches_real"] = {}
        for policy in POLICIES:
            runs = []
            for rep in range(args.trace_repeats):
                log(f"  ~{capacity:g} models, {policy}: replay {rep + 1}/{args.trace_repeats}")
                runs.append(replay(targets, trace, budget, policy, args.size_hint))
            matches = []
            for r in runs:
                misses = [m for m, h in zip(trace, r["hits"], strict=True) if not h]
                for m, c, size in zip(misses, r["costs"], r["sizes"], strict=True):
                    assert size == sizes[m], "the cache measured what the simulation assumes"
                    load_times.setdefault(m, []).append(c)
                # The offline simulation, fed this replay's own measured reload costs, must
                # make exactly the real cache's loads and evictions.
                cost = measured_costs(r["costs"])
                sim = simulate(trace, sizes, hints, budget, policy, cost)
                real = (r["stats"]["loads"], r["stats"]["evictions"])
                matches.append((sim["loads"], sim["evictions"]) == real)
            row["sim_matches_real"][policy] = all(matches)
            row["real"][policy] = summarise_real(runs, trace)
        row["belady"] = simulate(trace, sizes, hints, budget, "belady")
        budgets.append(row)

    # Per-model median load time over every real load: the estimates and "what if" use it.
    load_median = {m: statistics.median(v) for m, v in load_times.items()}

    def median_cost(m: int, n: int) -> float:
        # A model this trace never asked for (the variant study's other traces may, in a
        # short run): its first load's time, measured above.
        return load_median.get(m, first_load_s[m])

    def est_reload_s(loads_per_model: dict[int, int]) -> float:
        """Seconds a policy's loads would take at this run's per-model median load time."""
        return sum(n * load_median[m] for m, n in loads_per_model.items())

    for row in budgets:
        budget = row["budget_bytes"]
        belady = row["belady"]
        belady["est_reload_s"] = est_reload_s(belady["loads_per_model"])
        for policy, real in row["real"].items():
            sim = simulate(trace, sizes, hints, budget, policy, median_cost)
            real["est_reload_s"] = est_reload_s(sim["loads_per_model"])
            real["over_belady"] = real["loads"] / belady["loads"]
            real["over_compulsory"] = real["loads"] / compulsory
        row["compulsory"] = {
            "loads": compulsory,
            "hit_rate": (len(trace) - compulsory) / len(trace),
            "est_reload_s": sum(load_median[m] for m in set(trace)),
            "over_belady": compulsory / belady["loads"],
        }

    what_if = []
    for cap in range(1, len(targets) + 1):
        b = trace_budget(cap, sizes)
        what_if.append(
            {
                "capacity_models": cap,
                "budget_bytes": b,
                **{
                    f"{p}_loads": simulate(trace, sizes, hints, b, p, median_cost)["loads"]
                    for p in ("lru", "cost", "belady")
                },
            }
        )

    counts = [trace.count(m) for m in range(len(targets))]
    return {
        "jobs": len(trace),
        "size_hint": args.size_hint,
        "zipf_s": args.zipf_s,
        "seed": args.seed,
        "capacities": args.capacities,
        "total_bytes": sum(sizes),
        "models": [
            {
                "model": t.info.name,
                "cache_bytes": sizes[m],
                "disk_bytes": t.info.size_bytes,
                "zipf_rank": ranks[m],
                "jobs": counts[m],
                "first_load_ms": first_load_s[m] * 1000,
                "load_median_ms": load_median[m] * 1000 if m in load_median else None,
                "loads": {
                    f"{row['capacity']:g}": {
                        p: row["real"][p]["loads_per_model_first_replay"][m] for p in POLICIES
                    }
                    for row in budgets
                },
            }
            for m, t in enumerate(targets)
        ],
        "budgets": budgets,
        "what_if": what_if,
        "variants": variant_study(len(targets), sizes, hints, median_cost, args),
        "trace": trace,
    }


# ---------------------------------------------------------------------------- report


def report(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    machine, vers = machine_info(), versions()
    load = run["loadavg"]
    lines = [
        "renderfarm model cache benchmark",
        machine_line(machine, ram=True)
        + (
            f"; 1-min load average before {load[0]:.2f}, after {load[1]:.2f}"
            if None not in load
            else ""
        ),
        versions_line(vers),
        f"device    {DEVICE}, torch.float32; ModelCache + the worker's loaders and CacheKey.of",
        "",
        f"(1) switch latency: median of {args.repeats} rounds per model"
        + (f" ({args.big_repeats} for the full-size SD1.5)" if args.big else "")
        + f"; warm: median of {args.lookups} hits per round",
        "    cold/page  = unload, then a miss with the files in the OS page cache",
        "    cold/disk  = unload, files dropped from the page cache (fadvise DONTNEED), a miss",
        "    +read      = then reading every weight page once: float32 safetensors stay",
        "                 memory-mapped on the CPU, so a load maps the files and a job's first",
        "                 forward pass pages the weights in (that is where the disk reads go)",
        "    warm       = a hit: `with cache.use(key, loader): pass` on a cached key",
        "    first      = the first load of that model in this process (not in the medians)",
        "",
        f"{'model':22}{'family':11}{'MiB':>8}{'first':>8}{'cold/page':>10}{'+read':>8}"
        f"{'cold/disk':>10}{'+read':>8}{'unload':>8}{'warm us':>9}{'cold/warm':>11}",
    ]
    switch = []
    for row in run["switch"]:
        page, disk = median_ms(row["page"]), median_ms(row["disk"])
        warm_ms = median_ms(row["warm"])
        ratio = page / warm_ms
        lines.append(
            f"{row['label']:22}{row['family']:11}{row['cache_bytes'] / MIB:8.2f}"
            f"{row['first_load_s'] * 1000:8.1f}{page:10.1f}{median_ms(row['page_read']):8.1f}"
            f"{disk:10.1f}{median_ms(row['disk_read']):8.1f}{median_ms(row['unload']):8.1f}"
            f"{warm_ms * 1000:9.1f}{ratio:10.0f}x"
        )
        switch.append(
            {
                "label": row["label"],
                "model": row["model"],
                "family": row["family"],
                "kind": row["kind"],
                "cache_bytes": row["cache_bytes"],
                "disk_bytes": row["disk_bytes"],
                "first_load_ms": row["first_load_s"] * 1000,
                "cold_page_cache": spread_ms(row["page"]),
                "cold_page_cache_read_weights": spread_ms(row["page_read"]),
                "cold_disk": spread_ms(row["disk"]),
                "cold_disk_read_weights": spread_ms(row["disk_read"]),
                "unload": spread_ms(row["unload"]),
                "warm": spread_ms(row["warm"]) | {"samples_ms": None},
                "cold_over_warm": ratio,
                "resident_before_page": row["resident_before_page"],
                "resident_before_disk": row["resident_before_disk"],
            }
        )

    def residency(key: str) -> str:
        values = [v for row in run["switch"] for v in row[key] if v is not None]
        return f"{min(values):.0%}-{max(values):.0%}" if values else "unknown"

    g = run["gc"]
    lines += [
        "    ms unless noted; MiB = weights the cache measured; cold/warm = cold/page over warm",
        "    files resident in the page cache (mincore) before cold/page: "
        f"{residency('resident_before_page')}, before cold/disk: "
        f"{residency('resident_before_disk')}",
        "    unload = cache.unload(): drop + release_memory(), i.e. a full gc.collect(), which",
        f"    alone costs {g['median_ms']:.0f} ms in this process ({g['tracked_objects']} "
        f"tracked objects, {g['modules']} modules), whatever the model's size",
        "",
    ]

    t = run["trace"]
    caps = [f"{row['capacity']:g}" for row in t["budgets"]]
    lines += [
        f"(2) trace: {t['jobs']} jobs over {len(t['models'])} checkpoints "
        f"({t['total_bytes'] / MIB:.1f} MiB in all), Zipf s={t['zipf_s']:g} (seed {t['seed']}); "
        f"{args.trace_repeats} replays per policy and budget through a real ModelCache, "
        + (
            "size_hint = the size on disk (as the runner passes it)"
            if args.size_hint
            else "no size_hint (a model is loaded, then others evicted)"
        ),
        "",
        f"{'model':24}{'MiB':>8}{'rank':>6}{'jobs':>6}{'load ms':>9}"
        + "".join(f"{'~' + c + ' LRU/cost':>15}" for c in caps),
    ]
    for m in sorted(t["models"], key=lambda m: m["zipf_rank"]):
        load_ms = m["load_median_ms"]
        lines.append(
            f"{m['model']:24}{m['cache_bytes'] / MIB:8.2f}{m['zipf_rank']:6d}{m['jobs']:6d}"
            + (f"{load_ms:9.1f}" if load_ms is not None else f"{'-':>9}")
            + "".join(f"{m['loads'][c]['lru']:>10d} /{m['loads'][c]['cost']:>3d}" for c in caps)
        )
    lines += [
        "    load ms: median load_s the real caches measured for that model (load + measure);",
        "    loads per model: the first replay at each budget (~N = about N models)",
    ]
    names = {
        "lru": "LRU (real ModelCache)",
        "cost": "cost (real ModelCache)",
    }
    for row in t["budgets"]:
        bel, comp = row["belady"], row["compulsory"]
        lines += [
            "",
            f"budget ~{row['capacity']:g} models = {row['budget_bytes'] / MIB:.1f} MiB",
            f"{'policy':34}{'loads':>7}{'hits':>6}{'hit rate':>9}{'/Belady':>9}"
            f"{'reload s':>10}{'est s':>8}{'miss jobs s':>13}",
        ]
        for policy, real in row["real"].items():
            per_replay = real["loads_per_replay"]
            spread = f" ({min(per_replay)}-{max(per_replay)})" if len(set(per_replay)) > 1 else ""
            lines.append(
                f"{names[policy] + spread:34}{real['loads']:7g}{real['hits']:6g}"
                f"{real['hit_rate']:9.1%}{real['over_belady']:9.2f}{real['reload_s']:10.2f}"
                f"{real['est_reload_s']:8.2f}{real['miss_jobs_s']:13.2f}"
            )
        lines += [
            f"{'Belady offline (heuristic bound)':34}{bel['loads']:7d}{bel['hits']:6d}"
            f"{bel['hit_rate']:9.1%}{1:9.2f}{'-':>10}{bel['est_reload_s']:8.2f}{'-':>13}",
            f"{'compulsory (true lower bound)':34}{comp['loads']:7d}{t['jobs'] - comp['loads']:6d}"
            f"{comp['hit_rate']:9.1%}{comp['over_belady']:9.2f}{'-':>10}"
            f"{comp['est_reload_s']:8.2f}{'-':>13}",
            "offline simulation = the real cache's loads and evictions, every replay: "
            + ", ".join(
                f"{p} {'yes' if ok else 'NO'}" for p, ok in row["sim_matches_real"].items()
            ),
        ]
    first = t["budgets"][0]["real"]["lru"]
    lines += [
        "    reload s: the misses' load_s as the real cache measured them (median replay);",
        "    est s: each policy's loads x this run's per-model median load_s (like for like);",
        "    miss jobs s: whole jobs that missed (load + the evictions' gc.collect())",
        f"    high-water {first['high_water_bytes'] / MIB:.1f} MiB at the first budget "
        f"({t['budgets'][0]['budget_bytes'] / MIB:.1f} MiB), LRU: "
        + (
            "the size hint makes room before a load"
            if args.size_hint
            else "without a size hint, budget + one model"
        ),
        "",
        "what if (simulated on the same trace and sizes, cost at the median load_s): loads by",
        "budget in models",
        "       " + "".join(f"{w['capacity_models']:>6d}" for w in t["what_if"]) + "  models",
        "LRU    " + "".join(f"{w['lru_loads']:>6d}" for w in t["what_if"]),
        "cost   " + "".join(f"{w['cost_loads']:>6d}" for w in t["what_if"]),
        "Belady " + "".join(f"{w['belady_loads']:>6d}" for w in t["what_if"]),
    ]
    v = t["variants"]
    lines += [
        "",
        f"policy variants, simulated over {v['seeds']} trace seeds x budgets "
        f"{', '.join(f'{c:g}' for c in v['capacities'])} (loads / Belady's):",
        f"{'variant':46}{'geomean':>9}{'max':>7}{'worse than LRU':>16}",
    ]
    labels = {
        "lru": "LRU",
        "halved": "cost, evicted use counts halved (the policy)",
        "kept": "cost, use counts kept whole",
        "forgotten": "cost, use counts forgotten (plain GDSF)",
    }
    for name, r in v["over_belady"].items():
        lines.append(
            f"{labels[name]:46}{r['geomean']:9.3f}{r['max']:7.2f}{r['worse_than_lru']:16d}"
        )
    print("\n".join(lines), flush=True)
    return {
        "machine": {**machine, "loadavg_1min_before": load[0], "loadavg_1min_after": load[1]},
        "versions": vers,
        "config": config(args),
        "gc_collect": run["gc"],
        "switch": switch,
        "trace": t,
    }


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m bench.bench_cache", __doc__)
    p.add_argument("--jobs", type=int, default=200, help="jobs in the trace (default 200)")
    p.add_argument("--models", type=int, default=8, help="checkpoints in the trace (default 8)")
    p.add_argument(
        "--capacities",
        type=capacities,
        default=[3.0, 4.0, 5.0],
        help="trace budgets in mean model sizes, comma-separated (default 3,4,5)",
    )
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (default 1.1)")
    p.add_argument("--seed", type=int, default=0, help="trace seed (default 0)")
    p.add_argument("--trace-repeats", type=int, default=2, help="replays per policy and budget (2)")
    p.add_argument(
        "--variant-seeds",
        type=int,
        default=20,
        help="trace seeds the simulated policy variants are compared on (default 20)",
    )
    p.add_argument("--repeats", type=int, default=5, help="switch-latency rounds (default 5)")
    p.add_argument("--lookups", type=int, default=200, help="timed hits per round (200)")
    p.add_argument(
        "--big",
        action="store_true",
        help="also build and time a full-size SD1.5 (real configs, ~4 GB float32, ~1 min)",
    )
    p.add_argument("--big-repeats", type=int, default=3, help="rounds for --big (default 3)")
    p.add_argument(
        "--size-hint",
        action="store_true",
        help="trace: pass the size on disk as size_hint, as the runner does",
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp model store")
    args = p.parse_args(argv)
    for name in ("jobs", "models", "repeats", "trace_repeats", "lookups", "big_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.variant_seeds < 0:
        p.error("--variant-seeds must be >= 0")
    return args


def capacities(text: str) -> list[float]:
    """--capacities: positive numbers, comma-separated."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not numbers: {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"each capacity must be > 0, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with run_dir("renderfarm-bench-cache-", args.keep) as tmp:
        try:
            quiet_libraries()
            from worker.demo_models import write_demo_models

            load_before = loadavg()
            models_dir = tmp / "models"
            log(f"writing models to {models_dir}")
            write_demo_models(models_dir)
            write_model(models_dir, "checkpoints", "bench-sd15-mid", build_mid)
            for name, build in trace_variants(args.models):
                write_model(models_dir, "checkpoints", name, build)
            if args.big:
                started = time.perf_counter()
                log("building the full-size SD1.5 (--big)")
                write_model(models_dir, "checkpoints", "bench-sd15-full", build_full)
                log(f"  built in {time.perf_counter() - started:.0f} s")

            switch_models = [
                ("demo-sd15", "checkpoint"),
                ("demo-sdxl", "checkpoint"),
                ("bench-sd15-mid", "checkpoint"),
                ("demo-vae-sd15", "vae"),
                ("demo-controlnet-sd15", "controlnet"),
                ("demo-esrgan-x4", "upscaler"),
                ("demo-realesrgan-x2", "upscaler"),
                ("demo-aura-sr", "upscaler"),
            ]
            if args.big:
                switch_models.insert(3, ("bench-sd15-full", "checkpoint"))
            targets = [Target.of(n, n, f, models_dir) for n, f in switch_models]
            log(f"(1) switch latency: {args.repeats} rounds")
            gc_before = gc_cost()
            caps = {"bench-sd15-full": min(args.big_repeats, args.repeats)}
            switch = switch_latency(targets, args.repeats, args.lookups, caps)

            trace_targets = [
                Target.of(name, name, "checkpoint", models_dir)
                for name, _ in trace_variants(args.models)
            ]
            log(f"(2) trace: {args.jobs} jobs")
            trace = run_trace(trace_targets, args)
            run = {
                "switch": switch,
                "trace": trace,
                "gc": gc_before,
                "loadavg": (load_before, loadavg()),
            }
            write_json(args.json, report(args, run))
            return 0
        except KeyboardInterrupt:
            log("\ninterrupted; removing the temp model store")
            return 130


if __name__ == "__main__":
    sys.exit(main())
