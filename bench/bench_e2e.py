"""End-to-end benchmark: the same job in-process vs through the whole farm, per hardware class.

    .venv/bin/python -m bench.bench_e2e [--n 30] [--storage file|s3] [--json PATH]
        [--hardware cpu|openvino|gpu] [--model demo|sd15] [--width W --height H --steps S]

(a) baseline: the worker class's own loader once, then `worker.pipelines.txt2img` N times
    in this process, each call timed. --hardware cpu: `load_pipeline(model, "cpu",
    float32)`; gpu: `load_pipeline(model, "cuda:0", float16)` (the device and dtype a GPU
    worker picks; it loads to RAM and moves the pipeline to the GPU, the pipeline it runs is
    the same); openvino: `load_openvino_pipeline(model, ir_cache, "CPU")` with a
    `ModelCache` for the compiled shapes (converts to IR once, into the run's temp dir).
(b) farm: a real redis-server, the scheduler, one worker of that class (`renderfarm
    worker --hardware ...`; an openvino worker reads the IR the baseline wrote) and the
    dashboard (started with `renderfarm.localfarm`, as `renderfarm up` and the tests do); N jobs
    are submitted one at a time with HTTP POST /api/v1/jobs and GET /api/v1/jobs/<id> is
    polled (`shared.client.FarmClient`: the first GET at once, then every --poll-ms) until
    the record says `succeeded`; each job is timed from the POST to the poll that sees
    `succeeded`.
(c) farm burst (skip with --no-burst): N jobs posted at once, timed until the last
    one is seen `succeeded`: throughput with the queue kept full.

Models: --model demo (default) is the tiny demo-sd15 (64x64, 4 steps by default: farm
overhead); --model sd15 writes a checkpoint with the real SD1.5 configs (UNet 860M, VAE,
12-layer CLIP text encoder) and random weights (~4 GB float32; 512x512, 20 steps by
default), so a GPU does real work. --width/--height/--steps apply to both sides.

Both sides run on the same device and cores, one after the other, never at the same time
(--order blocks: all baseline renders, then all farm jobs; --order interleaved:
alternating, so background noise on a shared machine hits both alike). Model loading
and warm-up runs are excluded from both. Everything the benchmark starts
(redis-server, scheduler, worker, dashboard, moto's S3 server, the temp dir) is stopped or
removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    OtherLoad,
    api_token,
    loadavg,
    log,
    machine_info,
    machine_line,
    parser,
    percentile,
    redis_server_version,
    run_dir,
    sigint_ignored,
    tail,
    versions_line,
    write_json,
    write_model,
)
from renderfarm import localfarm
from shared.client import FarmClient

BUCKET = "renders"
MODEL = "demo-sd15"
SD15_MODEL = "bench-sd15"  # the real SD1.5 configs at random weights (--model sd15)
MODELS = {"demo": MODEL, "sd15": SD15_MODEL}
# --width/--height/--steps when not given: (size, steps) per --model.
DEFAULTS = {"demo": (64, 4), "sd15": (512, 20)}
HARDWARE_LABEL = {"cpu": "CPU", "openvino": "OpenVINO", "gpu": "GPU"}
GPU_DEVICE = "cuda:0"
OPENVINO_DEVICE = "CPU"
# The default job both sides run (--model demo on cpu): fixed seed, so every render does
# identical work. `job_spec` sets model, size, steps and hardware from the options.
SPEC: dict[str, Any] = {
    "kind": "txt2img",
    "model": MODEL,
    "prompt": "a lighthouse at dusk",
    "width": 64,
    "height": 64,
    "steps": 4,
    "seed": 1234,
    "sampler": "Euler a",
    "cfg_scale": 7.0,
    "batch_size": 1,
    "hardware": "cpu",
}


def job_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The one job both sides run, for these options."""
    return {
        **SPEC,
        "model": MODELS[args.model],
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "hardware": args.hardware,
    }


# ---------------------------------------------------------------------------- figures


def summary(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "mean_ms": statistics.fmean(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "samples_ms": [round(v, 3) for v in ms],
    }


def versions(hardware: str = "cpu") -> dict[str, str]:
    import celery
    import diffusers
    import torch

    redis_version = redis_server_version()
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_here": str(torch.get_num_threads()),
        "diffusers": diffusers.__version__,
        "celery": celery.__version__,
        "redis_server": "?" if redis_version is None else redis_version,
    }
    if hardware == "gpu":
        found["cuda"] = str(torch.version.cuda)
    elif hardware == "openvino":
        import openvino

        found["openvino"] = openvino.get_version()
    return found


# ---------------------------------------------------------------------------- device


def device_facts(hardware: str) -> dict[str, str]:
    """What the job runs on: hardware class, device, its name, dtype and both sides' code."""
    if hardware == "gpu":
        import torch

        return {
            "hardware": hardware,
            "device": GPU_DEVICE,
            "device_name": torch.cuda.get_device_name(GPU_DEVICE),
            "dtype": "float16",
            "baseline": f'load_pipeline(model, "{GPU_DEVICE}", torch.float16)',
            "worker": f"renderfarm worker --hardware gpu --device {GPU_DEVICE}",
        }
    if hardware == "openvino":
        import openvino

        name = openvino.Core().get_property(OPENVINO_DEVICE, "FULL_DEVICE_NAME")
        return {
            "hardware": hardware,
            "device": f"openvino:{OPENVINO_DEVICE}",
            "device_name": name,
            "dtype": "f32",
            "baseline": f'load_openvino_pipeline(model, ir_cache, "{OPENVINO_DEVICE}", '
            "cache=ModelCache(...))",
            "worker": "renderfarm worker --hardware openvino "
            f"(RENDERFARM_OPENVINO_DEVICE={OPENVINO_DEVICE}, the same IR cache)",
        }
    return {
        "hardware": hardware,
        "device": "cpu",
        "device_name": machine_info()["cpu_model"],
        "dtype": "float32",
        "baseline": 'load_pipeline(model, "cpu", torch.float32)',
        "worker": "renderfarm worker --hardware cpu",
    }


def write_models(args: argparse.Namespace, models_dir: Path) -> None:
    """The model the job names, written into the temp model store."""
    if args.model == "sd15":
        from bench.bench_openvino import build_checkpoint  # the real SD1.5 configs

        log(f"writing {SD15_MODEL} (real SD1.5 configs, random weights, ~4 GB) to {models_dir}")
        write_model(models_dir, "checkpoints", SD15_MODEL, build_checkpoint(full=True))
    else:
        from worker.demo_models import write_demo_models

        log(f"writing demo models to {models_dir}")
        write_demo_models(models_dir)


# ---------------------------------------------------------------------------- baseline


class Baseline:
    """The worker class's loader once, then `txt2img` per render, with the farm's job spec."""

    def __init__(
        self,
        models_dir: Path,
        spec: dict[str, Any] = SPEC,
        hardware: str = "cpu",
        ir_cache: Path | None = None,
    ) -> None:
        from shared.config import Settings
        from shared.jobspec import parse_spec
        from shared.modelstore import LocalModelStore
        from worker.device import pick_device
        from worker.pipelines import Addons, load_pipeline, txt2img

        self._txt2img = txt2img
        self._extra: dict[str, Any] = {"addons": Addons()}  # no VAE/ControlNet, as the job
        self.size = (spec["height"], spec["width"])
        # validated the way the API validates a submission
        self.spec = parse_spec(spec, Settings())
        name = spec["model"]
        model = LocalModelStore(models_dir).find(name, "checkpoint")
        if model is None:
            raise RuntimeError(f"{name} is not in the model store {models_dir}")
        self.model_bytes = model.size_bytes
        t0 = time.perf_counter()
        # Same loader, device and dtype as that class's worker (worker.runner.JobRunner).
        if hardware == "openvino":
            from shared.config import Settings
            from worker.cache import ModelCache
            from worker.openvino import load_openvino_pipeline

            if ir_cache is None:
                raise ValueError("an openvino baseline needs an IR cache dir")
            # The compiled shapes are entries of this cache, as in the worker's RAM cache.
            self.cache = ModelCache(Settings().cache_ram_mb * 2**20, name="baseline")
            self.loaded = load_openvino_pipeline(model, ir_cache, OPENVINO_DEVICE, cache=self.cache)
        else:
            device, dtype = pick_device(hardware, GPU_DEVICE if hardware == "gpu" else None)
            self.loaded = load_pipeline(model, device, dtype)
        self.load_s = time.perf_counter() - t0

    def render(self) -> float:
        t0 = time.perf_counter()
        # The images come back as a NumPy array: on a GPU that waits for the device.
        out = self._txt2img(self.loaded, self.spec, on_progress=lambda _: None, **self._extra)
        elapsed = time.perf_counter() - t0
        images = out[0] if isinstance(out, tuple) else out  # (images, passes) in newer code
        if images.shape != (1, *self.size, 3):
            raise RuntimeError(f"baseline render has shape {images.shape}")
        return elapsed


# ---------------------------------------------------------------------------- farm


class FarmSide:
    """Submits the job with `shared.client.FarmClient` (one keep-alive session) and polls its
    record, as a script using the API would."""

    def __init__(
        self,
        api: str,
        token: str,
        poll_s: float,
        job_timeout_s: float,
        procs: list,
        spec: dict[str, Any] = SPEC,
    ) -> None:
        self.client = FarmClient(api, token)
        self.spec = spec
        self.procs = procs  # the farm's processes: a dead one fails the run at once
        self.poll_s = poll_s
        self.job_timeout_s = job_timeout_s

    def post(self) -> str:
        return self.client.submit(self.spec)["id"]

    def wait(self, job_id: str, since: float, timeout_s: float | None = None) -> tuple[dict, int]:
        """Poll every poll_s until `succeeded`, at most timeout_s from `since`; returns the job
        and the number of GETs."""
        timeout_s = timeout_s or self.job_timeout_s
        polls = 0

        def seen(job: dict) -> None:
            nonlocal polls
            polls += 1
            if job["status"] in ("queued", "running") and any(
                p.poll() is not None for p in self.procs
            ):
                dead = [p.args for p in self.procs if p.poll() is not None]
                raise RuntimeError(f"a farm process exited while job {job_id} waited: {dead}")

        left = timeout_s - (time.perf_counter() - since)
        job = self.client.wait(job_id, timeout=left, poll_s=self.poll_s, on_poll=seen)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        return job, polls

    def run_job(self, timeout_s: float | None = None) -> dict[str, Any]:
        """One job, POST to `succeeded` seen; returns timings."""
        wall_start = time.time()
        t0 = time.perf_counter()
        job_id = self.post()
        t_posted = time.perf_counter()
        job, polls = self.wait(job_id, t0, timeout_s)
        t1 = time.perf_counter()
        wall_seen = time.time()
        return {
            "id": job_id,
            "manifest": job["manifest"],  # where the worker wrote it
            "e2e_s": t1 - t0,
            "post_s": t_posted - t0,
            "polls": polls,
            # Phases from the job record's timestamps (same host, same clock).
            "to_start_s": job["started_at"] - wall_start,
            # The scheduler's dispatch time, where the record has one.
            "to_dispatch_s": (
                job["dispatched_at"] - wall_start if job.get("dispatched_at") else None
            ),
            "worker_s": job["finished_at"] - job["started_at"],
            "to_seen_s": wall_seen - job["finished_at"],
        }

    def burst(self, n: int) -> dict[str, Any]:
        """Post n jobs at once, wait for all: throughput with the queue kept full."""
        t0 = time.perf_counter()
        ids = [self.post() for _ in range(n)]
        # One worker takes jobs in order, so waiting on them in order costs no time.
        jobs = [self.wait(job_id, t0, self.job_timeout_s * n)[0] for job_id in ids]
        total_s = time.perf_counter() - t0
        worker_span = max(j["finished_at"] for j in jobs) - min(j["started_at"] for j in jobs)
        return {"n": n, "total_s": total_s, "worker_span_s": worker_span}

    def close(self) -> None:
        self.client.close()


def start_s3() -> tuple[Any, dict[str, str]]:
    """moto's threaded S3 server on a free loopback port, with the bucket created."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = localfarm.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "RENDERFARM_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "RENDERFARM_S3_ACCESS_KEY_ID": "testing",
        "RENDERFARM_S3_SECRET_ACCESS_KEY": "testing",
        "RENDERFARM_S3_REGION": "us-east-1",
    }
    try:
        boto3.client(
            "s3",
            endpoint_url=env["RENDERFARM_S3_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=BUCKET)
    except BaseException:
        server.stop()
        raise
    return server, env


def start_farm(
    args: argparse.Namespace, tmp: Path, models_dir: Path, procs: list, servers: list
) -> tuple[dict[str, str], str, str]:
    """redis-server, (moto S3), one worker of --hardware's class, the dashboard; returns env,
    API URL, storage."""
    env = {
        "RENDERFARM_MODELS_DIR": str(models_dir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    extra: tuple[str, ...] = ()
    if args.hardware == "openvino":
        # The IR the baseline converted: the worker reads it and converts nothing.
        env["RENDERFARM_OPENVINO_CACHE_DIR"] = str(tmp / "openvino-cache")
        env["RENDERFARM_OPENVINO_DEVICE"] = OPENVINO_DEVICE
    elif args.hardware == "gpu":
        extra = ("--device", GPU_DEVICE)
    if args.storage == "s3":
        server, s3_env = start_s3()
        servers.append(server)
        env.update(s3_env, RENDERFARM_STORAGE_URL=f"s3://{BUCKET}/bench")
        storage = (
            f"s3://{BUCKET}/bench on moto's ThreadedMotoServer "
            f"({s3_env['RENDERFARM_S3_ENDPOINT_URL']}, in the benchmark process)"
        )
    else:
        env["RENDERFARM_STORAGE_URL"] = f"file://{tmp / 'outputs'}"
        storage = f"file://{tmp / 'outputs'}"

    redis_port = localfarm.free_port()
    procs.append(localfarm.start_redis(redis_port, tmp / "redis"))
    env["RENDERFARM_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    procs.append(localfarm.start_scheduler(env, log=tmp / "scheduler.log"))
    procs.append(localfarm.start_worker(args.hardware, env, log=tmp / "worker.log", extra=extra))
    api_port = localfarm.free_port()
    procs.append(localfarm.start_dashboard("127.0.0.1", api_port, env, log=tmp / "dashboard.log"))
    return env, f"http://127.0.0.1:{api_port}", storage


def read_render_s(env: dict[str, str], manifest_keys: list[str]) -> list[float]:
    """The worker's own render time per job (`render_s` in the job's manifest in storage)."""
    from shared.config import Settings
    from shared.storage import open_storage

    settings = Settings(
        storage_url=env["RENDERFARM_STORAGE_URL"],
        s3_endpoint_url=env.get("RENDERFARM_S3_ENDPOINT_URL"),
        s3_access_key_id=env.get("RENDERFARM_S3_ACCESS_KEY_ID"),
        s3_secret_access_key=env.get("RENDERFARM_S3_SECRET_ACCESS_KEY"),
        s3_region=env.get("RENDERFARM_S3_REGION", "us-east-1"),
    )
    storage = open_storage(settings)
    found = []
    for key in manifest_keys:
        try:
            manifest = json.loads(storage.get(key))
        except Exception:
            continue
        if "render_s" in manifest:
            found.append(float(manifest["render_s"]))
    return found


# ---------------------------------------------------------------------------- measuring


def measure(args: argparse.Namespace, baseline: Baseline, farm: FarmSide) -> dict[str, Any]:
    # Warm-up, not counted: the first farm job also waits for the worker to start and
    # load the model into its cache.
    base_warm = [baseline.render() for _ in range(args.warmup)]
    warm_timeout_s = max(300.0, 2 * farm.job_timeout_s)
    farm_warm = [farm.run_job(timeout_s=warm_timeout_s)["e2e_s"] for _ in range(args.warmup)]
    meter = OtherLoad([os.getpid(), *(p.pid for p in farm.procs)])
    base_times: list[float] = []
    jobs: list[dict[str, Any]] = []
    if args.order == "interleaved":
        for _ in range(args.n):
            base_times.append(baseline.render())
            jobs.append(farm.run_job())
    else:
        base_times = [baseline.render() for _ in range(args.n)]
        jobs = [farm.run_job() for _ in range(args.n)]
    burst = farm.burst(args.n) if args.burst else None
    return {
        "other_load": meter.stop(),
        "base_warm_s": base_warm,
        "farm_warm_s": farm_warm,
        "base_s": base_times,
        "jobs": jobs,
        "burst": burst,
    }


# ---------------------------------------------------------------------------- report


def report(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    machine, vers = machine_info(), versions(args.hardware)
    dev = run["device"]
    jobs = run["jobs"]
    b = summary(run["base_s"])
    f = summary([j["e2e_s"] for j in jobs])
    r = summary(run["render_s"]) if run["render_s"] else None
    for j in jobs:
        if j.get("to_dispatch_s") is not None:
            j["dispatch_to_start_s"] = j["to_start_s"] - j["to_dispatch_s"]
    phases = {
        name: summary([j[key] for j in jobs])
        for name, key in (
            ("POST answered (202)", "post_s"),
            ("POST -> dispatched (scheduler)", "to_dispatch_s"),
            ("dispatched -> worker started", "dispatch_to_start_s"),
            ("POST -> worker started", "to_start_s"),
            ("worker started -> succeeded", "worker_s"),
            ("succeeded -> seen by poll", "to_seen_s"),
        )
        if all(j.get(key) is not None for j in jobs)
    }
    overhead_ms = f["p50_ms"] - b["p50_ms"]
    ratios = {q: f[f"{q}_ms"] / b[f"{q}_ms"] for q in ("p50", "p95", "mean")}
    seq_per_min = 60_000 / f["mean_ms"]
    base_per_min = 60_000 / b["mean_ms"]
    polls = statistics.fmean(j["polls"] for j in jobs)
    burst = run["burst"]
    burst_per_min = burst["n"] / burst["total_s"] * 60 if burst else None

    spec = run["spec"]
    label = HARDWARE_LABEL[dev["hardware"]]
    order = (
        "alternating baseline render / farm job"
        if args.order == "interleaved"
        else "all baseline renders, then all farm jobs"
    )
    loader_name = dev["baseline"].split("(", 1)[0]
    converting = ", converting to IR" if dev["hardware"] == "openvino" else ""
    cores = "GPU" if dev["hardware"] == "gpu" else "cores"
    if args.warmup:
        warm = (
            f"not counted: {loader_name} ({run['load_s'] * 1000:.0f} ms{converting}) and "
            f"{args.warmup} warm-up renders in-process; {args.warmup} warm-up farm jobs "
            f"(the first took {run['farm_warm_s'][0]:.1f} s: worker start + model load)"
        )
    else:
        warm = (
            "none (--warmup 0): the first farm job includes worker start and model load; "
            f"{loader_name} in-process ({run['load_s'] * 1000:.0f} ms) is not counted"
        )
    load = run["loadavg"]
    other = run["other_load"]
    lines = [
        "renderfarm end-to-end benchmark",
        f"{machine_line(machine)}; 1-min load average before {load[0]:.2f}, after {load[1]:.2f}"
        if None not in load
        else f"machine   {machine['cpu_model']}, {machine['cpu_count']} cores",
        f"other     while measuring, processes this benchmark did not start used "
        f"{other['other_cpu_s']:.1f} CPU-s of {other['wall_s'] * (machine['cpu_count'] or 1):.1f}"
        f" ({other['other_share']:.0%} of the machine; steal {other['steal_s']:.1f} s)"
        + ("  <- busy machine: figures are noisy" if other["other_share"] > 0.1 else ""),
        versions_line(vers),
        f"job       txt2img {spec['model']} {spec['width']}x{spec['height']}, "
        f"{spec['steps']} steps, {spec['sampler']}, cfg {spec['cfg_scale']:g}, "
        f"seed {spec['seed']}, batch {spec['batch_size']}, {dev['device']} {dev['dtype']}",
        f"model     {spec['model']}: {run['model_desc']}",
        f"hardware  {dev['hardware']} on {dev['device_name']}; baseline {dev['baseline']}; "
        f"farm {dev['worker']}",
        f"storage   {run['storage']}",
        f"runs      N={args.n} each on the same {cores}, never concurrently ({order})",
        f"warm-up   {warm}",
        f"baseline  in this process: {loader_name} once, then txt2img() timed per call",
        f"farm      POST /api/v1/jobs -> scheduler -> Celery queue -> 1 {label} worker -> "
        "storage -> record 'succeeded'; timed from the POST to the GET /api/v1/jobs/<id> that sees "
        f"'succeeded'; one job at a time; polling every {args.poll_ms:g} ms "
        f"(mean {polls:.1f} GETs/job)",
        "",
        f"{'':34}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}{'min ms':>10}{'max ms':>10}",
    ]

    def row(name: str, s: dict[str, Any]) -> str:
        return (
            f"{name:34}{s['p50_ms']:10.1f}{s['p95_ms']:10.1f}{s['mean_ms']:10.1f}"
            f"{s['min_ms']:10.1f}{s['max_ms']:10.1f}"
        )

    lines.append(row("baseline (in-process txt2img)", b))
    lines.append(row("farm (end to end)", f))
    lines.append("  farm phases, from the job record:")
    lines += [row(f"    {name}", s) for name, s in phases.items()]
    if r:
        lines.append(row("  worker render_s (manifest)", r))
    else:
        lines.append("  worker render_s: not found in the jobs' manifests")
    lines += [
        "",
        f"overhead per job (farm p50 - baseline p50): {overhead_ms:.1f} ms",
        "ratio farm/baseline: " + ", ".join(f"{q} {x:.2f}x" for q, x in ratios.items()),
    ]
    if r:
        lines.append(
            f"farm p50 - worker render_s p50: {f['p50_ms'] - r['p50_ms']:.1f} ms "
            "(queue, storage upload, record, polling: all but the worker's own render)"
        )
    slower = r["p50_ms"] - b["p50_ms"] if r else 0.0
    if slower > max(10.0, 0.1 * b["p50_ms"]):
        victim = {
            "gpu": "CPU side (kernel launches, sampler steps, the image copied back)",
            "openvino": "OpenVINO threads",
        }.get(dev["hardware"], "torch threads")
        lines.append(
            f"note: the worker's own render (p50) is {slower:.0f} ms slower than in-process: "
            f"on {machine['usable_cores']} cores the polling every {args.poll_ms:g} ms "
            f"(this client, the dashboard, Redis) takes CPU from the worker's {victim} "
            "(a longer --poll-ms shows how much), and so does any other load on the machine "
            "(see the load average above)."
        )
    lines.append(
        f"farm throughput, one job at a time: {seq_per_min:.1f} jobs/min "
        f"(in-process: {base_per_min:.1f} renders/min)"
    )
    if burst:
        lines.append(
            f"farm throughput, {burst['n']} jobs posted at once: {burst_per_min:.1f} jobs/min "
            f"({burst['total_s']:.2f} s from first POST to last 'succeeded' seen)"
        )
    print("\n".join(lines), flush=True)

    return {
        "machine": {**machine, "loadavg_1min_before": load[0], "loadavg_1min_after": load[1]},
        "versions": vers,
        "other_load": other,
        "config": {
            "n": args.n,
            "warmup": args.warmup,
            "poll_ms": args.poll_ms,
            "order": args.order,
            "storage": args.storage,
            "storage_url": run["storage"],
            "hardware": dev["hardware"],
            "model": args.model,
            "width": spec["width"],
            "height": spec["height"],
            "steps": spec["steps"],
            "spec": spec,
        },
        "device": {**dev, "model_name": spec["model"], "model_bytes": run.get("model_bytes")},
        "baseline": {**b, "load_ms": run["load_s"] * 1000, "renders_per_min": base_per_min},
        "farm": {
            **f,
            "jobs_per_min_sequential": seq_per_min,
            "mean_gets_per_job": polls,
            "first_warmup_s": run["farm_warm_s"][0] if run["farm_warm_s"] else None,
            "phases": phases,
            "worker_render_s": r,
        },
        "burst": {**burst, "jobs_per_min": burst_per_min} if burst else None,
        "overhead_ms_p50": overhead_ms,
        **{f"ratio_{q}": x for q, x in ratios.items()},
    }


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m bench.bench_e2e", __doc__)
    p.add_argument("--n", type=int, default=30, help="measured jobs on each side (default 30)")
    p.add_argument("--storage", choices=("file", "s3"), default="file")
    p.add_argument("--warmup", type=int, default=3, help="uncounted runs on each side")
    p.add_argument("--poll-ms", type=float, default=10, help="GET /api/v1/jobs/<id> interval")
    p.add_argument("--order", choices=("blocks", "interleaved"), default="blocks")
    p.add_argument("--no-burst", dest="burst", action="store_false", help="skip the burst run")
    p.add_argument(
        "--job-timeout",
        type=float,
        help="seconds per measured job (default 120; 600 with --model sd15)",
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, outputs)")
    p.add_argument(
        "--hardware",
        choices=("cpu", "openvino", "gpu"),
        default="cpu",
        help="worker class, the job's `hardware` and what the baseline runs (default cpu)",
    )
    p.add_argument(
        "--model",
        choices=tuple(MODELS),
        default="demo",
        help="demo: tiny demo-sd15; sd15: the real SD1.5 configs, random weights (~4 GB)",
    )
    p.add_argument("--width", type=int, help="image width (default 64; 512 with --model sd15)")
    p.add_argument("--height", type=int, help="image height (default 64; 512 with --model sd15)")
    p.add_argument("--steps", type=int, help="denoising steps (default 4; 20 with --model sd15)")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    size, steps = DEFAULTS[args.model]
    args.width = size if args.width is None else args.width
    args.height = size if args.height is None else args.height
    args.steps = steps if args.steps is None else args.steps
    if args.job_timeout is None:
        args.job_timeout = 600.0 if args.model == "sd15" else 120.0
    try:
        from shared.config import Settings
        from shared.jobspec import parse_spec

        parse_spec(
            job_spec(args), Settings()
        )  # as the API will check it: size limits, multiples of 8
    except ValueError as exc:
        p.error(f"the job these options make is invalid: {exc}")
    if args.hardware == "gpu":
        from worker.device import DeviceUnavailable, pick_device

        try:
            pick_device("gpu", GPU_DEVICE)  # the GPU worker's own check
        except DeviceUnavailable as exc:
            p.error(f"--hardware gpu: {exc}. Use --hardware cpu|openvino on this machine.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs: list = []
    servers: list = []
    farm: FarmSide | None = None
    with run_dir("renderfarm-bench-", args.keep, "logs, outputs, redis data") as tmp:
        try:
            load_before = loadavg()
            models_dir = tmp / "models"
            spec = job_spec(args)
            write_models(args, models_dir)
            dev = device_facts(args.hardware)
            log(
                f"loading {spec['model']} in-process: {dev['baseline']} on {dev['device_name']}"
                + (" (converts to IR)" if args.hardware == "openvino" else "")
            )
            baseline = Baseline(models_dir, spec, args.hardware, tmp / "openvino-cache")
            log(f"starting the farm ({args.storage} storage, one {args.hardware} worker)")
            env, api, storage = start_farm(args, tmp, models_dir, procs, servers)
            token = api_token(env["RENDERFARM_REDIS_URL"])
            farm = FarmSide(api, token, args.poll_ms / 1000, args.job_timeout, list(procs), spec)
            log(
                f"measuring: {args.warmup} warm-up + {args.n} on each side ({args.order})"
                + (f", then a burst of {args.n} farm jobs" if args.burst else "")
            )
            run = measure(args, baseline, farm)
            run["render_s"] = read_render_s(env, [j["manifest"] for j in run["jobs"]])
            run["load_s"] = baseline.load_s
            run["spec"] = spec
            run["device"] = dev
            run["model_bytes"] = baseline.model_bytes
            run["model_desc"] = (
                "real SD1.5 configs (UNet 860M, VAE, 12-layer CLIP text encoder), random "
                f"weights, {baseline.model_bytes / 2**30:.2f} GiB on disk"
                if args.model == "sd15"
                else f"tiny demo model, {baseline.model_bytes / 2**20:.1f} MiB on disk"
            )
            run["storage"] = storage
            run["loadavg"] = (load_before, loadavg())
            # Stop the farm before reporting, so nothing else is running while we print.
            farm.close()
            localfarm.stop(*reversed(procs))
            procs.clear()
            write_json(args.json, report(args, run))
            return 0
        except KeyboardInterrupt:
            log("\ninterrupted; stopping everything the benchmark started")
            return 130
        except Exception:
            for name in ("scheduler.log", "worker.log", "dashboard.log"):
                log(f"--- {tmp / name} (last lines)\n{tail(tmp / name)}")
            raise
        finally:
            with sigint_ignored():
                if farm is not None:
                    farm.close()
                localfarm.stop(*reversed(procs))
                for server in servers:
                    server.stop()


if __name__ == "__main__":
    sys.exit(main())
