"""Model cache benchmark: switch latency per model family, and LRU on a Zipf job trace.

    .venv/bin/python -m bench.bench_cache [--jobs 200] [--models 8] [--json PATH] [--big]

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
    seeded; which model gets which popularity rank is a seeded shuffle). The cache budget
    holds about --capacity models (capacity x the mean measured size, at least the largest).
    The trace is replayed through a real ModelCache with `load_pipeline` (no rendering:
    `with cache.use(key, loader): pass` per job), --trace-repeats times with a fresh cache.
    Compared, on the same trace and the same measured sizes: the compulsory misses (one per
    distinct model: a true lower bound) and Belady's offline policy (evict the entry whose
    next use is farthest away; optimal for equal sizes, a heuristic with unequal sizes).
    An offline LRU simulation must give exactly the real cache's loads (checked).

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

DEVICE = "cpu"


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


def timed_use(cache: Any, target: Target) -> tuple[float, bool]:
    """Seconds for one job's `with cache.use(...)` (acquire + release), and whether it hit."""
    hit = target.key in cache
    started = time.perf_counter()
    with cache.use(target.key, target.loader):
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


def simulate(trace: list[int], sizes: list[int], budget: int, policy: str) -> dict[str, Any]:
    """Replay a trace offline with the real cache's semantics: on a miss the model is loaded,
    then other entries are evicted until the total fits the budget (the new one is protected
    while its job holds it); after the job, the cache shrinks to the budget if it can.

    policy "lru": least recently used first (what worker.cache does).
    policy "belady": the entry whose next use is farthest away first (never used again =
    infinitely far; ties: the larger first). Optimal for equal sizes; with unequal sizes the
    optimum is NP-hard and this is a heuristic, not a bound.
    """
    never = len(trace)
    next_use = [never] * len(trace)
    seen: dict[int, int] = {}
    for i in range(len(trace) - 1, -1, -1):
        next_use[i] = seen.get(trace[i], never)
        seen[trace[i]] = i

    cached: OrderedDict[int, int] = OrderedDict()  # model -> its next use; LRU order
    used = peak = loads = evictions = 0
    per_model: dict[int, int] = {}

    def victim(protect: int | None) -> int | None:
        candidates = [m for m in cached if m != protect]
        if not candidates:
            return None
        if policy == "lru":
            return candidates[0]
        return max(candidates, key=lambda m: (cached[m], sizes[m]))

    def shrink(protect: int | None) -> None:
        nonlocal used, evictions
        while used > budget and (v := victim(protect)) is not None:
            del cached[v]
            used -= sizes[v]
            evictions += 1

    for i, m in enumerate(trace):
        if m in cached:
            cached.move_to_end(m)
        else:
            loads += 1
            per_model[m] = per_model.get(m, 0) + 1
            cached[m] = next_use[i]
            used += sizes[m]
            peak = max(peak, used)
            shrink(protect=m)
        cached[m] = next_use[i]
        shrink(protect=None)
    return {
        "policy": policy,
        "loads": loads,
        "hits": len(trace) - loads,
        "hit_rate": (len(trace) - loads) / len(trace),
        "evictions": evictions,
        "peak_bytes": peak,
        "loads_per_model": per_model,
    }


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


def replay(targets: list[Target], trace: list[int], budget: int) -> dict[str, Any]:
    """The trace through a real ModelCache: per job, its time and whether it hit."""
    from worker.cache import ModelCache

    cache = ModelCache(budget, name="trace")
    times: list[float] = []
    hits: list[bool] = []
    with timing_release_memory() as releases:
        for m in trace:
            dt, hit = timed_use(cache, targets[m])
            times.append(dt)
            hits.append(hit)
    stats = cache.stats()
    cache.clear()
    return {"stats": stats, "times": times, "hits": hits, "releases": releases}


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
    budget = max(int(args.capacity * statistics.fmean(sizes)), max(sizes))
    trace, ranks = zipf_trace(len(targets), args.jobs, args.zipf_s, args.seed)

    runs = []
    for rep in range(args.trace_repeats):
        log(f"  trace replay {rep + 1}/{args.trace_repeats}")
        runs.append(replay(targets, trace, budget))
    loads = {r["stats"]["loads"] for r in runs}
    assert len(loads) == 1, f"LRU is deterministic, yet loads differ between replays: {loads}"
    real = runs[0]["stats"]
    hits = runs[0]["hits"]
    assert real["hits"] == sum(hits) and real["misses"] == real["loads"] == len(trace) - sum(hits)

    lru = simulate(trace, sizes, budget, "lru")
    belady = simulate(trace, sizes, budget, "belady")
    compulsory = len(set(trace))

    # Per-model miss times (median over every miss of every replay), for the Belady estimate.
    miss_times: dict[int, list[float]] = {}
    for r in runs:
        for m, dt, hit in zip(trace, r["times"], r["hits"], strict=True):
            if not hit:
                miss_times.setdefault(m, []).append(dt)
    miss_median = {m: statistics.median(v) for m, v in miss_times.items()}

    def load_seconds(sim: dict[str, Any]) -> float:
        """Seconds a policy's loads would take at this run's measured per-model miss times."""
        return sum(n * miss_median[m] for m, n in sim["loads_per_model"].items())

    totals = [sum(dt for dt, h in zip(r["times"], r["hits"], strict=True) if not h) for r in runs]
    hit_times = [dt for r in runs for dt, h in zip(r["times"], r["hits"], strict=True) if h]
    walls = [sum(r["times"]) for r in runs]
    releases = [sum(r["releases"]) for r in runs]

    what_if = []
    for cap in range(1, len(targets) + 1):
        b = max(int(cap * statistics.fmean(sizes)), max(sizes))
        what_if.append(
            {
                "capacity_models": cap,
                "budget_bytes": b,
                "lru_loads": simulate(trace, sizes, b, "lru")["loads"],
                "belady_loads": simulate(trace, sizes, b, "belady")["loads"],
            }
        )

    counts = [trace.count(m) for m in range(len(targets))]
    return {
        "jobs": len(trace),
        "zipf_s": args.zipf_s,
        "seed": args.seed,
        "capacity": args.capacity,
        "budget_bytes": budget,
        "total_bytes": sum(sizes),
        "models": [
            {
                "model": t.info.name,
                "cache_bytes": sizes[m],
                "disk_bytes": t.info.size_bytes,
                "zipf_rank": ranks[m],
                "jobs": counts[m],
                "lru_loads": sum(1 for x, h in zip(trace, hits, strict=True) if x == m and not h),
                "first_load_ms": first_load_s[m] * 1000,
                "miss_median_ms": miss_median[m] * 1000 if m in miss_median else None,
            }
            for m, t in enumerate(targets)
        ],
        "real_lru": {
            "loads": real["loads"],
            "hits": real["hits"],
            "hit_rate": real["hits"] / len(trace),
            "evictions": real["evictions"],
            "high_water_bytes": real["high_water_bytes"],
            "over_budget_events": real["over_budget_events"],
            "load_time_s": spread_ms(totals) | {"median_s": statistics.median(totals)},
            "replay_wall_s": statistics.median(walls),
            "release_memory_calls": len(runs[0]["releases"]),
            "release_memory_s": statistics.median(releases),
            "hit_ms": spread_ms(hit_times) | {"samples_ms": None},
        },
        "sim_lru": lru,
        "sim_lru_matches_real": lru["loads"] == real["loads"]
        and lru["evictions"] == real["evictions"],
        "belady": belady | {"est_load_time_s": load_seconds(belady)},
        "compulsory": {
            "loads": compulsory,
            "hit_rate": (len(trace) - compulsory) / len(trace),
            "est_load_time_s": sum(miss_median[m] for m in set(trace)),
        },
        "lru_over_belady": real["loads"] / belady["loads"],
        "lru_over_compulsory": real["loads"] / compulsory,
        "what_if": what_if,
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
    real, bel, comp = t["real_lru"], t["belady"], t["compulsory"]
    lines += [
        f"(2) trace: {t['jobs']} jobs over {len(t['models'])} checkpoints, Zipf s={t['zipf_s']:g} "
        f"(seed {t['seed']}); budget {t['budget_bytes'] / MIB:.1f} MiB = ~{t['capacity']:g} "
        f"models of {t['total_bytes'] / MIB:.1f} MiB in all; {args.trace_repeats} replays",
        "",
        f"{'model':24}{'MiB':>8}{'rank':>6}{'jobs':>6}{'LRU loads':>11}{'miss ms':>10}",
    ]
    for m in sorted(t["models"], key=lambda m: m["zipf_rank"]):
        miss = f"{m['miss_median_ms']:10.1f}" if m["miss_median_ms"] is not None else f"{'-':>10}"
        lines.append(
            f"{m['model']:24}{m['cache_bytes'] / MIB:8.2f}{m['zipf_rank']:6d}{m['jobs']:6d}"
            f"{m['lru_loads']:11d}{miss}"
        )
    lines += [
        "    miss ms: median time of a job that missed (load + measure + evictions + gc)",
        "",
        f"{'policy':34}{'loads':>7}{'hits':>7}{'hit rate':>10}{'load s':>9}",
        f"{'LRU (the real ModelCache)':34}{real['loads']:7d}{real['hits']:7d}"
        f"{real['hit_rate']:10.1%}{real['load_time_s']['median_s']:9.2f}",
        f"{'Belady offline (heuristic bound)':34}{bel['loads']:7d}{bel['hits']:7d}"
        f"{bel['hit_rate']:10.1%}{bel['est_load_time_s']:9.2f}*",
        f"{'compulsory (true lower bound)':34}{comp['loads']:7d}{t['jobs'] - comp['loads']:7d}"
        f"{comp['hit_rate']:10.1%}{comp['est_load_time_s']:9.2f}*",
        f"LRU/Belady loads {t['lru_over_belady']:.2f}x, LRU/compulsory "
        f"{t['lru_over_compulsory']:.2f}x; offline LRU simulation gives the real cache's "
        f"loads and evictions: {'yes' if t['sim_lru_matches_real'] else 'NO'}",
        f"real cache: {real['evictions']} evictions, {real['over_budget_events']} over-budget "
        f"events, hit median {real['hit_ms']['median_ms'] * 1000:.1f} us, replay wall "
        f"{real['replay_wall_s']:.1f} s",
        f"high-water {real['high_water_bytes'] / MIB:.1f} MiB for a {t['budget_bytes'] / MIB:.1f} "
        "MiB budget: without a size_hint (the runner passes none)",
        "    a model is measured once loaded and evictions follow: the peak is budget + one model",
        f"release_memory() after evictions: {real['release_memory_calls']} calls, "
        f"{real['release_memory_s']:.2f} s of the {real['load_time_s']['median_s']:.2f} s "
        "load time (median replay)",
        "    load s: real = median over replays of the jobs that missed; * = this run's",
        "    per-model median miss time x that policy's loads per model",
        "",
        "what if (simulated on the same trace and sizes): loads by budget in models",
        "    " + "".join(f"{w['capacity_models']:>6d}" for w in t["what_if"]) + "  models",
        "LRU " + "".join(f"{w['lru_loads']:>6d}" for w in t["what_if"]),
        "Bel " + "".join(f"{w['belady_loads']:>6d}" for w in t["what_if"]),
    ]
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
    p.add_argument("--capacity", type=float, default=3, help="budget in mean model sizes (3)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (default 1.1)")
    p.add_argument("--seed", type=int, default=0, help="trace seed (default 0)")
    p.add_argument("--trace-repeats", type=int, default=2, help="trace replays (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="switch-latency rounds (default 5)")
    p.add_argument("--lookups", type=int, default=200, help="timed hits per round (200)")
    p.add_argument(
        "--big",
        action="store_true",
        help="also build and time a full-size SD1.5 (real configs, ~4 GB float32, ~1 min)",
    )
    p.add_argument("--big-repeats", type=int, default=3, help="rounds for --big (default 3)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp model store")
    args = p.parse_args(argv)
    for name in ("jobs", "models", "repeats", "trace_repeats", "lookups", "big_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.capacity <= 0:
        p.error("--capacity must be > 0")
    return args


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
