"""OpenVINO worker vs torch CPU worker, each in f32 and bf16: the same jobs, seconds per
job, PSNR against torch f32, first-job latency.

    .venv/bin/python -m bench.bench_openvino [--json PATH] [--full]

Models (random weights, generated into a temp model store, removed on exit unless --keep):
- checkpoint `bench-sd15`: the real SD1.5 block structure (UNet: 4 levels, 2 layers per
  block, cross-attention in the first three, 768-d text; VAE: 4 levels, 2 layers per block;
  CLIP text encoder 768 wide). By default at reduced width: UNet block_out_channels
  (64, 128, 256, 256), VAE (32, 64, 128, 128), a 4-layer text encoder. `--full`: the real
  SD1.5 configs (UNet 860M parameters, ~4 GB float32; conversion takes minutes).
- upscaler `bench-esrgan-x4.safetensors`: an ESRGAN (RRDBNet) x4 that spandrel detects. By
  default 32 filters and 1 RRDB block (the real one, 64 filters and 23 blocks, takes
  minutes per 512x512 image on 2 cores); `--full`: 64 filters, 23 blocks.

Backends, each what a worker runs with that setting:
- torch f32: `load_pipeline(model, "cpu", float32)`, the CPU worker's default: the baseline;
- torch bf16: the same pipeline under `torch.autocast("cpu", bfloat16)`
  (RENDERFARM_TORCH_CPU_PRECISION=bf16);
- openvino f32 / bf16: `load_openvino_pipeline(..., precision=...)`
  (RENDERFARM_OPENVINO_PRECISION; `auto` is bf16 where OpenVINO's CPU reports BF16).
The bf16 rows are left out where the CPU has no bf16 (they would be emulated).

Measured, in one run:
(1) txt2img 256x256, --steps steps (Euler a, CFG 7, seed 1234) through `worker.pipelines.
    txt2img`: one warm-up job per backend, then --repeats rounds (default 5) of one job each,
    the order rotating every round; medians, the ratio to torch f32's median, and the PSNR
    of each backend's image against torch f32's (images in [0, 1]). "Best vs best": the
    fastest OpenVINO backend against the fastest torch one, among those at >= 40 dB.
(2) First-job latency, each in a fresh process (this script's --child mode), import time
    reported apart: torch f32 (load + first job); OpenVINO at the worker's default precision
    with an empty IR cache (convert + compile + first job); with the IR cached but
    OpenVINO's compile cache (CACHE_DIR) emptied (read IR + compile + first job); with both
    cached (the normal worker restart).
(3) Upscale of a 512x512 image x4 (2048x2048) with `worker.upscalers.upscale` (tile 256,
    overlap 16: 3x3 tiles): torch f32 (`load_upscaler`), openvino f32 and bf16
    (`openvino_upscaler(..., precision=...)`): one warm-up on a 224x224 image (one tile, the
    same 256x256 compiled shape), then --upscale-repeats rounds (default 3), rotating;
    medians, ratios, PSNR and max abs difference against torch f32.
The CPU time other processes took while (1) and (3) ran is reported with the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    MIB,
    OtherLoad,
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

CHECKPOINT = "bench-sd15"
UPSCALER = "bench-esrgan-x4"
SEED = 1234
SIZE = 256
UPSCALE_IN = 512
UPSCALE_WARMUP_IN = 224  # one 256 px tile with the 16 px overlap: the same compiled shape
CHILD_MODES = ("torch", "ov-cold", "ov-warm-ir", "ov-warm")


# ---------------------------------------------------------------------------- models


def sd15_configs(full: bool) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(unet, text encoder, vae) configs: SD1.5's, or its block structure at reduced width."""
    from bench.bench_cache import sd15_unet

    unet = sd15_unet((320, 640, 1280, 1280) if full else (64, 128, 256, 256))
    text = dict(
        hidden_size=768,  # the UNet's cross-attention width
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12 if full else 4,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    vae = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512) if full else (32, 64, 128, 128),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    return unet, text, vae


def build_checkpoint(full: bool):
    from bench.bench_cache import build_sd15_layout

    unet, text, vae = sd15_configs(full)

    def build(out: Path) -> None:
        build_sd15_layout(out, 7, unet, text, vae)

    return build


def esrgan_size(full: bool) -> tuple[int, int]:
    return (64, 23) if full else (32, 1)


def build_esrgan(filters: int, blocks: int):
    def build(out: Path) -> None:
        import torch
        from safetensors.torch import save_file
        from spandrel.architectures.ESRGAN import ESRGAN

        torch.manual_seed(20)
        net = ESRGAN(in_nc=3, out_nc=3, num_filters=filters, num_blocks=blocks, scale=4)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out)

    return build


def write_models(models_dir: Path, full: bool) -> dict[str, Any]:
    from bench.bench_cache import files_of

    started = time.perf_counter()
    write_model(models_dir, "checkpoints", CHECKPOINT, build_checkpoint(full))
    filters, blocks = esrgan_size(full)
    target = models_dir / "upscalers" / f"{UPSCALER}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    build_esrgan(filters, blocks)(target)

    def mib(path: Path) -> float:
        return sum(p.stat().st_size for p in files_of(path)) / MIB

    ckpt = models_dir / "checkpoints" / CHECKPOINT
    return {
        "build_s": time.perf_counter() - started,
        "checkpoint_mib": mib(ckpt),
        "unet_mib": mib(ckpt / "unet"),
        "vae_mib": mib(ckpt / "vae"),
        "text_encoder_mib": mib(ckpt / "text_encoder"),
        "esrgan_filters": filters,
        "esrgan_blocks": blocks,
        "esrgan_mib": mib(target),
    }


# ---------------------------------------------------------------------------- jobs

BASELINE = "torch f32"
MIN_PSNR_DB = 40.0  # the quality bar "best vs best" holds backends to


def job_spec(steps: int):
    from shared.config import Settings
    from shared.jobspec import parse_spec

    return parse_spec(
        {
            "model": CHECKPOINT,
            "prompt": "a lighthouse on a cliff at sunset, oil painting",
            "negative_prompt": "blurry",
            "steps": steps,
            "width": SIZE,
            "height": SIZE,
            "seed": SEED,
            "sampler": "Euler a",
            "cfg_scale": 7.0,
        },
        Settings(),
    )


def render(pipe, steps: int):
    from worker.pipelines import Addons, txt2img

    images, _ = txt2img(pipe, job_spec(steps), Addons(), lambda p: None)
    return images


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def psnr(reference, image) -> float:
    """dB, images in [0, 1]; inf when identical."""
    import numpy as np

    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(image, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def worker_precision() -> str:
    """What an OpenVINO worker on this CPU runs with the default setting (auto)."""
    from worker import openvino as ovb

    return ovb.resolve_precision("auto", "CPU")


def precisions() -> list[str]:
    """f32, and bf16 where the CPU has it (elsewhere it would be emulated, and slow)."""
    return ["f32", "bf16"] if worker_precision() == "bf16" else ["f32"]


class OVLog(logging.Handler):
    """Collects the backend's own "converted ... in Xs" and "compiled ... in Xs" lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.convert_s = 0.0
        self.compile_s = 0.0
        self.compiles = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        if msg.startswith("compiled OpenVINO"):
            self.compile_s += float(record.args[-1])
            self.compiles += 1
        elif msg.startswith("converted "):
            self.convert_s += float(record.args[-1])


def ov_log() -> OVLog:
    handler = OVLog()
    # The package's logger: compiles log from worker.openvino.variants, conversions from
    # worker.openvino.convert (pipelines) and worker.openvino.load (upscalers).
    logger = logging.getLogger("worker.openvino")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def child(mode: str, models_dir: Path, ir_cache: Path, steps: int, out: Path) -> int:
    """One first job in this fresh process; figures written to `out` as JSON."""
    started = time.perf_counter()
    import torch

    from shared.modelstore import LocalModelStore

    quiet_libraries()
    info = LocalModelStore(models_dir).find(CHECKPOINT, "checkpoint")
    assert info is not None
    result: dict[str, Any] = {"mode": mode}
    if mode == "torch":
        from worker.pipelines import load_pipeline

        result["import_s"] = time.perf_counter() - started
        result["precision"] = "f32"
        result["load_s"], pipe = timed(load_pipeline, info, "cpu", torch.float32)
    else:
        from worker import openvino as ovb

        handler = ov_log()
        result["import_s"] = time.perf_counter() - started
        result["precision"] = precision = worker_precision()
        result["load_s"], pipe = timed(
            ovb.load_openvino_pipeline,
            info,
            ir_cache,
            "CPU",
            precision=precision,
            cache=worker_cache(),
        )
        result["conversions"] = ovb.conversion_count()
        result["convert_s"] = handler.convert_s
    result["first_job_s"], _ = timed(render, pipe, steps)
    if mode != "torch":
        result["compile_s"] = handler.compile_s
        result["compiles"] = handler.compiles
    result["total_s"] = result["load_s"] + result["first_job_s"]
    out.write_text(json.dumps(result))
    return 0


def run_child(mode: str, models_dir: Path, ir_cache: Path, steps: int, tmp: Path) -> dict:
    out = tmp / f"child-{mode}.json"
    cmd = [sys.executable, "-m", "bench.bench_openvino", "--child", mode]
    cmd += ["--models-dir", str(models_dir), "--ir-cache", str(ir_cache)]
    cmd += ["--steps", str(steps), "--child-out", str(out)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - started
    return result


def first_jobs(models_dir: Path, ir_cache: Path, steps: int, tmp: Path) -> dict[str, dict]:
    results = {}
    for mode in CHILD_MODES:
        if mode == "ov-cold":
            shutil.rmtree(ir_cache, ignore_errors=True)
        if mode == "ov-warm-ir":  # keep the IR, drop OpenVINO's compiled blobs
            shutil.rmtree(ir_cache / "compiled", ignore_errors=True)
        log(f"(2) first job in a fresh process: {mode}")
        results[mode] = run_child(mode, models_dir, ir_cache, steps, tmp)
    return results


def rotate(fns: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """`repeats` rounds of one timed call per backend; the order rotates every round, so
    each backend runs first, second, ... equally often (whatever ran before it warms or
    cools the caches and the cores)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            dt, _ = timed(fns[name])
            times[name].append(dt)
            log(f"    {name} {dt:.2f}s")
    return times


def worker_cache() -> Any:
    """The model cache compiled variants go into, with a worker's default budget."""
    from shared.config import Settings
    from worker.cache import ModelCache

    return ModelCache(Settings().cache_ram_mb * 2**20, name="ram")


def compare(outputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each backend's output against torch f32's: PSNR, max abs difference, all finite."""
    import numpy as np

    ref = outputs[BASELINE]
    return {
        name: {
            "psnr_db": None if name == BASELINE else psnr(ref, out),  # inf: identical
            "max_abs_diff": float(np.abs(np.asarray(ref) - np.asarray(out)).max()),
            "finite": bool(np.isfinite(out).all()),
        }
        for name, out in outputs.items()
    }


def summarise(times: dict[str, list[float]], quality: dict[str, dict]) -> dict[str, Any]:
    """Medians, ratios to torch f32, and the best torch and OpenVINO backends (>= 40 dB)."""
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: median[BASELINE] / m for name, m in median.items()}

    def best(prefix: str) -> str | None:
        fit = [
            n
            for n in median
            if n.startswith(prefix) and (quality[n]["psnr_db"] or math.inf) >= MIN_PSNR_DB
        ]
        return min(fit, key=median.__getitem__) if fit else None

    torch_best, ov_best = best("torch"), best("openvino")
    return {
        "median_s": median,
        "ratio_vs_torch_f32": ratio,
        "best": {
            "torch": torch_best,
            "openvino": ov_best,
            "ratio": median[torch_best] / median[ov_best] if torch_best and ov_best else None,
        },
    }


def steady_txt2img(models_dir: Path, ir_cache: Path, steps: int, repeats: int) -> dict:
    import torch

    from shared.modelstore import LocalModelStore
    from worker import openvino as ovb
    from worker.pipelines import LoadedPipeline, load_pipeline

    info = LocalModelStore(models_dir).find(CHECKPOINT, "checkpoint")
    torch_pipe = load_pipeline(info, "cpu", torch.float32)
    pipes: dict[str, Any] = {BASELINE: torch_pipe}
    if "bf16" in precisions():  # the same weights, every job under autocast
        pipes["torch bf16"] = LoadedPipeline(
            torch_pipe.pipe, torch_pipe.scheduler_config, torch.bfloat16
        )
    for precision in precisions():
        pipes[f"openvino {precision}"] = ovb.load_openvino_pipeline(
            info, ir_cache, "CPU", precision=precision, cache=worker_cache()
        )
    log("(1) txt2img warm-up")
    warm = {name: timed(render, pipe, steps) for name, pipe in pipes.items()}
    quality = compare({name: w[1] for name, w in warm.items()})
    log(f"(1) txt2img {repeats} rounds, one job per backend each, rotating")
    other = OtherLoad([os.getpid()])
    times = rotate({n: (lambda p=p: render(p, steps)) for n, p in pipes.items()}, repeats)
    stats = {n: ovb.openvino_stats(p) for n, p in pipes.items() if n.startswith("openvino")}
    del pipes
    return {
        "warmup_s": {name: w[0] for name, w in warm.items()},
        "times_s": times,
        "quality": quality,
        "other_load": other.stop(),
        "openvino_stats": stats,
        **summarise(times, quality),
    }


def steady_upscale(models_dir: Path, ir_cache: Path, repeats: int) -> dict:
    import numpy as np

    from shared.modelstore import LocalModelStore
    from worker import openvino as ovb
    from worker.upscalers import load_upscaler, upscale

    info = LocalModelStore(models_dir).find(UPSCALER, "upscaler")
    torch_up = load_upscaler(info)
    ups: dict[str, Any] = {BASELINE: torch_up}
    convert: dict[str, dict[str, Any]] = {}
    for precision in precisions():
        before = ovb.conversion_count()
        seconds, ups[f"openvino {precision}"] = timed(
            ovb.openvino_upscaler,
            load_upscaler(info),
            ir_cache,
            "CPU",
            precision=precision,
            cache=worker_cache(),
        )
        convert[precision] = {"s": seconds, "conversions": ovb.conversion_count() - before}

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:UPSCALE_IN, 0:UPSCALE_IN] / UPSCALE_IN
    base = np.stack([x, y, (x + y) / 2], axis=-1)
    image = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32)
    small = image[:UPSCALE_WARMUP_IN, :UPSCALE_WARMUP_IN]
    out = UPSCALE_IN * 4

    log("(3) upscale warm-up (one tile)")
    warm = {
        n: timed(upscale, u, small, 4 * UPSCALE_WARMUP_IN, 4 * UPSCALE_WARMUP_IN)[0]
        for n, u in ups.items()
    }
    results: dict[str, Any] = {}

    def run(name: str) -> None:
        results[name] = upscale(ups[name], image, out, out, tile=256)

    log(f"(3) upscale {repeats} rounds, rotating")
    other = OtherLoad([os.getpid()])
    times = rotate({n: (lambda n=n: run(n)) for n in ups}, repeats)
    quality = compare(results)
    return {
        "family": torch_up.family,
        "convert_and_load": convert,
        "warmup_one_tile_s": warm,
        "times_s": times,
        "quality": quality,
        "other_load": other.stop(),
        "output_shape": list(results[BASELINE].shape),
        **summarise(times, quality),
    }


# ---------------------------------------------------------------------------- report


def ov_versions() -> dict[str, str]:
    import openvino
    import spandrel

    from bench.bench_cache import versions

    return {**versions(), "openvino": openvino.__version__, "spandrel": spandrel.__version__}


def bf16_line() -> str:
    """What the CPU says about bf16: its flags, and OpenVINO's capabilities."""
    import openvino

    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        words = set()
    flags = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in words]
    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return (
        f"bf16      CPU flags: {' '.join(flags) or 'none'}; OpenVINO CPU capabilities: "
        f"{', '.join(map(str, caps))}; an OpenVINO worker's default (auto): "
        f"{worker_precision()}"
    )


def table(name: str, d: dict[str, Any]) -> list[str]:
    """One row per backend: median, ratio to torch f32, PSNR and max |diff|, the runs."""
    lines = [
        f"{name:18}{'median s':>10}{'vs torch f32':>14}{'PSNR dB':>9}{'max |diff|':>12}   runs (s)"
    ]
    for backend, med in d["median_s"].items():
        q = d["quality"][backend]
        db = "ref" if backend == BASELINE else f"{q['psnr_db']:.1f}"
        runs = ", ".join(f"{x:.2f}" for x in d["times_s"][backend])
        lines.append(
            f"  {backend:16}{med:10.2f}{d['ratio_vs_torch_f32'][backend]:13.2f}x{db:>9}"
            f"{q['max_abs_diff']:12.2e}   {runs}" + ("" if q["finite"] else "   NOT FINITE")
        )
    best = d["best"]
    if best["ratio"] is not None:
        med = d["median_s"]
        lines.append(
            f"  best vs best (>= {MIN_PSNR_DB:.0f} dB): {best['openvino']} "
            f"{med[best['openvino']]:.2f} s vs {best['torch']} {med[best['torch']]:.2f} s: "
            f"{best['ratio']:.2f}x"
        )
    other = d["other_load"]
    lines.append(
        f"  other processes took {other['other_cpu_s']:.0f} cpu-s of {other['wall_s']:.0f} s "
        f"({100 * other['other_share']:.0f}% of the cores) while this ran"
    )
    return lines


def report(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    machine, vers = machine_info(), ov_versions()
    m, t, u, f = run["models"], run["txt2img"], run["upscale"], run["first"]
    load = run["loadavg"]
    size = "full SD1.5 configs" if args.full else "reduced width"
    lines = [
        "renderfarm OpenVINO vs torch CPU benchmark",
        machine_line(machine, ram=True)
        + "; 1-min load average "
        + ", ".join(f"{k} {v:.2f}" for k, v in load.items() if v is not None),
        versions_line(vers),
        bf16_line(),
        f"models    {CHECKPOINT} ({size}; random weights): {m['checkpoint_mib']:.0f} MiB "
        f"(UNet {m['unet_mib']:.0f}, VAE {m['vae_mib']:.0f}, text encoder "
        f"{m['text_encoder_mib']:.0f}); {UPSCALER}: ESRGAN x4, {m['esrgan_filters']} filters, "
        f"{m['esrgan_blocks']} RRDB blocks, {m['esrgan_mib']:.1f} MiB; built in "
        f"{m['build_s']:.0f} s",
        "",
        f"(1) txt2img {SIZE}x{SIZE}, {args.steps} steps, Euler a, CFG 7, seed {SEED}: median of "
        f"{args.repeats} rounds after one warm-up, rotating; PSNR of the warm-up images",
        *table("backend", t),
        "    warm-up job s: "
        + ", ".join(f"{n} {s:.2f}" for n, s in t["warmup_s"].items())
        + " (compiles the shapes)",
        "",
        f"(3) upscale {UPSCALE_IN}x{UPSCALE_IN} -> {4 * UPSCALE_IN}x{4 * UPSCALE_IN} "
        f"(tile 256, 3x3 tiles): median of {args.upscale_repeats} rounds, rotating",
        *table("backend", u),
        "    warm-up one tile s: "
        + ", ".join(f"{n} {s:.2f}" for n, s in u["warmup_one_tile_s"].items())
        + "; conversion to IR (first openvino_upscaler call): "
        + ", ".join(
            f"{p} {c['s']:.2f} s ({c['conversions']} converted)"
            for p, c in u["convert_and_load"].items()
        ),
        "",
        "(2) first job (txt2img as in (1)), each in a fresh process; import time not counted",
        f"{'case':40}{'import':>8}{'load':>8}{'convert':>9}{'compile':>9}{'1st job':>9}"
        f"{'load+1st':>10}",
    ]
    ov_precision = f["ov-warm"]["precision"]
    labels = {
        "torch": "torch f32",
        "ov-cold": f"openvino {ov_precision}, empty IR cache",
        "ov-warm-ir": f"openvino {ov_precision}, IR cached, no CACHE_DIR",
        "ov-warm": f"openvino {ov_precision}, IR + CACHE_DIR cached",
    }
    for mode, label in labels.items():
        r = f[mode]
        conv = f"{r['convert_s']:9.1f}" if "convert_s" in r else f"{'-':>9}"
        comp = f"{r['compile_s']:9.1f}" if "compile_s" in r else f"{'-':>9}"
        lines.append(
            f"{label:40}{r['import_s']:8.1f}{r['load_s']:8.1f}{conv}{comp}"
            f"{r['first_job_s']:9.1f}{r['total_s']:10.1f}"
        )
    cold, warm_ir, warm = f["ov-cold"], f["ov-warm-ir"], f["ov-warm"]
    lines += [
        "    seconds; load = load_pipeline / load_openvino_pipeline (convert = the backend's "
        "own conversion time, inside load); compile = OpenVINO compile_model of every shape",
        "    the job used (inside 1st job; from the compile cache when CACHE_DIR has it)",
        f"    conversions: cold {cold['conversions']}, warm {warm_ir['conversions']} / "
        f"{warm['conversions']}; compiles per first job: {warm['compiles']}; CACHE_DIR "
        f"cuts compile from {warm_ir['compile_s']:.1f} s to {warm['compile_s']:.1f} s",
        f"    first-job latency openvino warm {warm['total_s']:.1f} s vs torch "
        f"{f['torch']['total_s']:.1f} s; cold (conversion) {cold['total_s']:.1f} s",
    ]
    print("\n".join(lines), flush=True)
    return {
        "machine": {**machine, "loadavg_1min": load, "bf16": bf16_line()},
        "versions": vers,
        "config": config(args),
        "models": m,
        "txt2img": t,
        "upscale": u,
        "first_job": f,
    }


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m bench.bench_openvino", __doc__)
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument(
        "--full",
        action="store_true",
        help="real sizes: SD1.5 configs (~4 GB) and ESRGAN 64 filters x 23 blocks (slow)",
    )
    p.add_argument("--steps", type=int, default=10, help="txt2img steps (default 10)")
    p.add_argument(
        "--repeats", type=int, default=5, help="txt2img rounds, one job per backend (default 5)"
    )
    p.add_argument("--upscale-repeats", type=int, default=3, help="upscale rounds (default 3)")
    p.add_argument("--keep", action="store_true", help="keep the temp model store and IR cache")
    p.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)
    p.add_argument("--models-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--ir-cache", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.steps, args.repeats, args.upscale_repeats) < 1:
        p.error("--steps, --repeats and --upscale-repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args.child, args.models_dir, args.ir_cache, args.steps, args.child_out)
    with run_dir("renderfarm-bench-openvino-", args.keep) as tmp:
        try:
            quiet_libraries()
            load = {"start": loadavg()}
            models_dir, ir_cache = tmp / "models", tmp / "ir-cache"
            log(f"writing models to {models_dir}")
            models = write_models(models_dir, args.full)
            first = first_jobs(models_dir, ir_cache, args.steps, tmp)
            load["after (2)"] = loadavg()
            txt = steady_txt2img(models_dir, ir_cache, args.steps, args.repeats)
            up = steady_upscale(models_dir, ir_cache, args.upscale_repeats)
            load["end"] = loadavg()
            run = {"models": models, "first": first, "txt2img": txt, "upscale": up, "loadavg": load}
            write_json(args.json, report(args, run))
            return 0
        except KeyboardInterrupt:
            log("\ninterrupted; removing the temp model store")
            return 130


if __name__ == "__main__":
    sys.exit(main())
