"""Scheduler benchmark: model affinity vs plain routing on a Zipf trace.

    .venv/bin/python -m bench.bench_scheduler [--jobs 60] [--arrivals 0,60%] [--json PATH]

(1) Routing. --models tiny SD1.5-layout checkpoints (`worker.demo_models.build_sd15`, each
    with its own seed and name, all the same size) are written to a temp model store, plus
    one more that each worker preloads at start-up (`--preload`: the one-time imports and
    first load are paid before the trace; it is never used by the trace and is the first
    entry evicted). A seeded trace of --jobs txt2img jobs (64x64, --steps steps, one owner)
    draws its models with Zipf popularity (exponent --zipf-s). For each arrival pattern
    (--arrivals: 0 = every job POSTed back to back; a steady rate in jobs/s; or P% = a
    steady P% of the throughput, jobs/makespan, the burst runs reached) the same
    trace runs twice, each time on a fresh farm started with `renderfarm.localfarm` (its own
    Redis DB on one redis-server, --workers fresh CPU workers with empty caches, the
    dashboard; OMP_NUM_THREADS = usable cores / workers, see --torch-threads):
    (a) affinity: the farm's dispatcher (`renderfarm scheduler`), default settings;
    (b) plain: RENDERFARM_AFFINITY_WAIT_S=0 and a `Dispatcher` subclass (run by this module
        in a subprocess) whose `choose()` ignores what the workers hold and gives each job
        to the next idle able worker in rotating order, and no warm round (an idle worker
        taking a later job whose model it holds), as plain class-queue round-robin.
    Every worker's RENDERFARM_CACHE_RAM_MB is set so its cache holds --capacity of the
    models (computed from the weights' bytes and the size-on-disk hint the worker passes
    to the cache). Jobs are posted with POST /api/v1/jobs (one keep-alive session); once
    all have succeeded, the per-worker cache counters are read from GET /api/v1/workers
    (`cache.loads` less the preload) and each job's timestamps from GET /api/v1/jobs/<id>.
    Bounds on the loads: the compulsory misses (distinct models in the trace: no routing
    can do better); Belady on one pooled cache of workers x capacity in submission order
    (a bound for any routing that starts jobs in submission order); and per variant,
    Belady per worker on the jobs it actually got (the best any eviction policy could do
    with that assignment). A replay of each worker's jobs in its cache policy
    (--cache-policy, with each model's measured load time) should give about its real
    loads; an LRU replay of all of them sorts every miss: another worker held the model at
    the time (the routing could have hit) or none did.
Submission throughput is bench/bench_submit.py.

Everything the benchmark starts (redis-server, dispatchers, workers, dashboards, temp
dir) is stopped or removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any, get_args

from bench import common
from bench.bench_cache import simulate, zipf_trace
from bench.common import (
    MIB,
    OtherLoad,
    api_token,
    config,
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
from worker.eviction import PolicyName

REPO = Path(__file__).resolve().parents[1]
WARMUP_MODEL = "sched-warmup"
OWNER = "bench"
LOADED_S = 0.02  # a job's load_s at or above this: its model was loaded, not found cached


STARTED = time.monotonic()


def log(msg: str) -> None:
    """A progress line, stamped with the seconds since the start."""
    common.log(f"[{time.monotonic() - STARTED:5.0f} s] {msg}")


# ---------------------------------------------------------------------------- plain routing


def plain_dispatcher_class():
    """The farm's Dispatcher with model affinity taken out (imported lazily: Celery, Redis)."""
    from scheduler.dispatcher import Dispatcher, FleetView, can_run

    class PlainDispatcher(Dispatcher):
        """Any idle able worker, in rotating order: what one class queue consumed by every
        worker of the class gives (no worker is preferred for holding the model)."""

        _turn = 0
        affinity_window = 0  # no warm round either

        def choose(self, rec: dict[str, Any], spec: Any, view: FleetView):
            able = sorted(
                (w for w in view.workers.values() if can_run(w, spec)), key=lambda w: w["name"]
            )
            if not able:
                return None, "waiting for a compatible worker"
            idle = [w for w in able if w["name"] not in view.busy]
            if not idle:
                return None, "waiting for a free worker"
            # The first idle worker at or after the turn; the turn moves past it.
            names = [w["name"] for w in able]
            order = names[self._turn % len(names) :] + names[: self._turn % len(names)]
            pick = next(w for n in order for w in idle if w["name"] == n)
            self._turn = names.index(pick["name"]) + 1
            return pick, ""

    return PlainDispatcher


def run_plain_dispatcher() -> int:
    """Entry point of the subprocess variant (b) runs instead of `renderfarm scheduler`."""
    from shared.config import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings()
    logging.info("plain dispatcher (no affinity) on %s", settings.redis_url)
    plain_dispatcher_class()(settings).run_forever()
    return 0


def start_plain_dispatcher(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_scheduler", "--plain-dispatcher"],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


# ---------------------------------------------------------------------------- models


def weight_bytes(folder: Path) -> int:
    """Bytes of tensor data in a model's .safetensors files (file size less the header)."""
    total = 0
    for f in folder.rglob("*.safetensors"):
        with open(f, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
        total += f.stat().st_size - 8 - header_len
    return total


def write_models(models_dir: Path, n: int, seed: int) -> list[str]:
    """n tiny SD1.5 checkpoints with different weights, plus the preload model."""
    from worker.demo_models import build_sd15

    names = [f"sched-m{i}" for i in range(n)]
    for i, name in enumerate([*names, WARMUP_MODEL]):
        write_model(models_dir, "checkpoints", name, partial(build_sd15, seed=seed * 1000 + i))
    return names


def cache_budget_mb(models_dir: Path, names: list[str], capacity: int) -> dict[str, Any]:
    """RENDERFARM_CACHE_RAM_MB for a cache that holds `capacity` models but not one more.

    The worker passes the size on disk (d) as a hint, evicting before a load until the
    cached weights (w each) + d fit; after the load it evicts until the weights fit. So
    with k cached, a miss keeps all of them iff k*w + d <= budget: the budget must lie in
    [(capacity-1)*w + d, capacity*w + d). The middle of that range, in whole MiB.
    """
    from shared.modelstore import LocalModelStore

    w = max(weight_bytes(models_dir / "checkpoints" / n) for n in [*names, WARMUP_MODEL])
    d = max(
        LocalModelStore(models_dir).find(n, "checkpoint").size_bytes  # type: ignore[union-attr]
        for n in [*names, WARMUP_MODEL]
    )
    budget_mb = round(((capacity - 0.5) * w + d) / MIB)
    lo, hi = (capacity - 1) * w + d, capacity * w + d
    if not lo <= budget_mb * MIB < hi:
        raise RuntimeError(f"no whole-MiB budget holds exactly {capacity} models (w={w}, d={d})")
    return {"budget_mb": budget_mb, "weight_bytes": w, "disk_bytes": d}


# ---------------------------------------------------------------------------- a farm


class Farm:
    """redis DB `db` on the shared redis-server, a dispatcher, CPU workers, the dashboard."""

    def __init__(
        self,
        label: str,
        env: dict[str, str],
        tmp: Path,
        workers: int,
        dispatcher: str | None,
        preload: str | None,
    ) -> None:
        self.label = label
        self.env = env
        self.procs: list[subprocess.Popen] = []
        self.logs = tmp / f"logs-{label}"
        self.logs.mkdir(parents=True, exist_ok=True)
        port = localfarm.free_port()
        self.url = f"http://127.0.0.1:{port}"
        # one keep-alive session, signed in
        self.client = FarmClient(self.url, api_token(env["RENDERFARM_REDIS_URL"], OWNER))
        extra = ("--preload", preload) if preload else ()
        try:
            for i in range(workers):
                self.procs.append(
                    localfarm.start_worker(
                        "cpu", env, log=self.logs / f"worker{i}.log", extra=extra
                    )
                )
            self.procs.append(
                localfarm.start_dashboard("127.0.0.1", port, env, log=self.logs / "dashboard.log")
            )
            if dispatcher == "affinity":
                self.procs.append(localfarm.start_scheduler(env, log=self.logs / "scheduler.log"))
            elif dispatcher == "plain":
                self.procs.append(start_plain_dispatcher(env, self.logs / "scheduler.log"))
            self.wait_workers(workers)
        except BaseException:
            self.close()
            raise

    def check_alive(self) -> None:
        dead = [p.args for p in self.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{self.label}: a farm process exited: {dead}; logs in {self.logs}")

    def workers(self) -> list[dict[str, Any]]:
        return self.client.workers()

    def wait_workers(self, count: int, timeout: float = 240) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(live := self.workers()) < count:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label}: only {len(live)} of {count} workers live")
            time.sleep(0.2)
        return live

    def post(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.client.submit(spec)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.job(job_id)

    def close(self) -> None:
        self.client.close()
        localfarm.stop(*reversed(self.procs))
        self.procs.clear()


# ---------------------------------------------------------------------------- (1) routing


def spec_for(i: int, model: str, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kind": "txt2img",
        "model": model,
        "prompt": f"trace job {i}",
        "width": 64,
        "height": 64,
        "steps": args.steps,
        "seed": 1000 + i,
        "sampler": "Euler a",
        "cfg_scale": 7.0,
        "hardware": "cpu",
        "owner": OWNER,
    }


def run_trace(
    farm: Farm, trace: list[str], rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Post the trace (all at once or at --rate), wait for every job, read the figures."""
    before = {w["name"]: w["cache"] for w in farm.wait_workers(args.workers)}
    meter = OtherLoad([os.getpid(), *(p.pid for p in farm.procs)])
    ids: list[str] = []
    post_s: list[float] = []
    t0 = time.monotonic()
    for i, model in enumerate(trace):
        if rate > 0:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        started = time.perf_counter()
        ids.append(farm.post(spec_for(i, model, args))["id"])
        post_s.append(time.perf_counter() - started)
    submitted_s = time.monotonic() - t0
    deadline = time.monotonic() + args.trace_timeout
    while True:
        listed = farm.client.jobs(limit=len(ids))
        status = {j["id"]: j["status"] for j in listed}
        bad = {i: s for i, s in status.items() if s in ("failed", "canceled")}
        if bad:
            raise RuntimeError(f"{farm.label}: jobs ended {bad}; logs in {farm.logs}")
        if sum(status.get(i) == "succeeded" for i in ids) == len(ids):
            break
        farm.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{farm.label}: trace not done after {args.trace_timeout:.0f}s")
        time.sleep(args.poll_s)
    other = meter.stop()
    # The heartbeat that counts every job's load: wait for one written after the last job.
    deadline = time.monotonic() + 30
    workers = farm.workers()
    while sum(w["jobs_done"] for w in workers) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{farm.label}: heartbeats do not show every job done")
        time.sleep(0.2)
        workers = farm.workers()
    jobs = [farm.job(i) for i in ids]
    return {
        "jobs": jobs,
        "post_s": post_s,
        "submitted_s": submitted_s,
        "workers": workers,
        "cache_before": before,
        "other_load": other,
    }


def stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": max(values),
    }


def replay(seq: list[int], capacity: int, policy: str, costs: list[float] | None = None) -> int:
    """Loads of an offline replay of `seq` in a cache of `capacity` equal-sized models
    (`costs`: each model's reload seconds, for the cost policy)."""
    ones = [1] * (max(seq) + 1)
    cost = None if costs is None else (lambda m, n: costs[m])
    return simulate(seq, ones, ones, capacity, policy, cost)["loads"]


def measured_load_s(jobs: list[dict[str, Any]], models: list[str]) -> list[float]:
    """Each model's median load time over the jobs that loaded it (the cost policy's
    reload cost); models never seen loading get the overall median."""
    loading = [j for j in jobs if float(j.get("load_s") or 0) >= LOADED_S]
    every = [float(j["load_s"]) for j in loading] or [1.0]
    per = {m: [float(j["load_s"]) for j in loading if j["spec"]["model"] == m] for m in models}
    return [statistics.median(per[m] or every) for m in models]


def analyse(run: dict[str, Any], capacity: int, policy: str) -> dict[str, Any]:
    jobs = run["jobs"]
    models = sorted({j["spec"]["model"] for j in jobs} | {WARMUP_MODEL})
    index = {m: i for i, m in enumerate(models)}
    costs = measured_load_s(jobs, models)
    per_worker = []
    for w in sorted(run["workers"], key=lambda w: w["name"]):
        mine = sorted((j for j in jobs if j["worker"] == w["name"]), key=lambda j: j["started_at"])
        seq = [index[WARMUP_MODEL]] + [index[j["spec"]["model"]] for j in mine]
        pre = run["cache_before"].get(w["name"], {})
        cache = w["cache"]
        per_worker.append(
            {
                "name": w["name"],
                "jobs": len(mine),
                "loads": cache["loads"] - pre.get("loads", 0),
                "hits": cache["hits"] - pre.get("hits", 0),
                "evictions": cache["evictions"] - pre.get("evictions", 0),
                "over_budget_events": cache["over_budget_events"],
                "high_water_bytes": cache["high_water_bytes"],
                "budget_bytes": w["cache_budget"],
                "held_at_end": [m["name"] for m in w["models"]],
                # Replays of this worker's jobs in start order, after the preload: in the
                # worker's own eviction policy (a check), and Belady (the best possible).
                "replay_loads": replay(seq, capacity, policy, costs) - 1,
                "belady_loads": replay(seq, capacity, "belady") - 1,
            }
        )
    routing = classify_misses(jobs, capacity)
    created = [j["created_at"] for j in jobs]
    wait_dispatch = [j["dispatched_at"] - j["created_at"] for j in jobs]
    wait_start = [j["started_at"] - j["created_at"] for j in jobs]
    service = [j["finished_at"] - j["started_at"] for j in jobs]
    turnaround = [j["finished_at"] - j["created_at"] for j in jobs]
    # Did the dispatcher keep submission order? (inversions among start times)
    starts = [j["started_at"] for j in jobs]
    inversions = sum(
        1 for i in range(len(starts)) for k in range(i + 1, len(starts)) if starts[k] < starts[i]
    )
    return {
        "loads": sum(w["loads"] for w in per_worker),
        "hits": sum(w["hits"] for w in per_worker),
        "evictions": sum(w["evictions"] for w in per_worker),
        "replay_loads": sum(w["replay_loads"] for w in per_worker),
        **routing,
        "belady_given_assignment": sum(w["belady_loads"] for w in per_worker),
        "wait_dispatch_s": stats(wait_dispatch),
        "wait_start_s": stats(wait_start),
        "service_s": stats(service),
        "turnaround_s": stats(turnaround),
        "makespan_s": max(j["finished_at"] for j in jobs) - min(created),
        "submit_span_s": run["submitted_s"],
        "start_order_inversions": inversions,
        "per_worker": per_worker,
        "post_ms_mean": statistics.fmean(run["post_s"]) * 1000,
        "other_load": run["other_load"],
        "jobs": [
            {
                "model": j["spec"]["model"],
                "worker": j["worker"],
                "created_at": j["created_at"],
                "dispatched_at": j["dispatched_at"],
                "started_at": j["started_at"],
                "finished_at": j["finished_at"],
            }
            for j in jobs
        ],
    }


def classify_misses(jobs: list[dict[str, Any]], capacity: int) -> dict[str, int]:
    """Replay every worker's LRU cache in start order (the preload first) and sort each
    job's cache lookup: a hit; a miss while another worker held the model (the routing
    could have hit); a miss while no worker held it."""
    caches: dict[str, OrderedDict[str, None]] = {}
    found = {"replay_hits": 0, "misses_held_elsewhere": 0, "misses_held_nowhere": 0}
    for job in sorted(jobs, key=lambda j: j["started_at"]):
        mine = caches.setdefault(job["worker"], OrderedDict({WARMUP_MODEL: None}))
        model = job["spec"]["model"]
        if model in mine:
            found["replay_hits"] += 1
            mine.move_to_end(model)
            continue
        elsewhere = any(model in c for w, c in caches.items() if w != job["worker"])
        found["misses_held_elsewhere" if elsewhere else "misses_held_nowhere"] += 1
        mine[model] = None
        while len(mine) > capacity:
            mine.popitem(last=False)
    return found


def bounds(trace: list[str], workers: int, capacity: int) -> dict[str, Any]:
    models = sorted(set(trace))
    seq = [models.index(m) for m in trace]
    pooled = replay(seq, workers * capacity, "belady")
    return {"compulsory": len(models), "pooled_belady_in_order": pooled}


# ---------------------------------------------------------------------------- report


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "celery", "kombu", "redis", "flask", "werkzeug"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    redis_version = redis_server_version()
    if redis_version is not None:
        found["redis_server"] = redis_version
    return found


def arrival_name(rate: float, short: bool = False, spec: str = "") -> str:
    """ "burst" or "1.5/s" (short); with `spec` "60%", how the rate was derived."""
    if rate <= 0:
        return "burst" if short else "all at once (POSTed back to back)"
    if short:
        return f"{rate:.2g}/s"
    derived = f" ({spec} of the burst runs' jobs/makespan)" if spec.endswith("%") else ""
    return f"steady {rate:.3g} jobs/s{derived}"


def resolve_rate(spec: str, runs: list[dict[str, Any]], jobs: int) -> float:
    """jobs/s for an --arrivals entry: a number, or a share of the burst runs' throughput."""
    if not spec.endswith("%"):
        return float(spec)
    burst = [jobs / v["makespan_s"] for v in runs if v["arrival_rate"] <= 0]
    return float(spec[:-1]) / 100 * statistics.fmean(burst)


def report(args: argparse.Namespace, r: dict[str, Any]) -> dict[str, Any]:
    machine, vers = machine_info(), versions()
    la = r["loadavg"]
    b = r["bounds"]
    lines = [
        "renderfarm scheduler benchmark",
        machine_line(machine)
        + "; load average (1/5/15 min) at start "
        + "/".join(f"{x:.2f}" for x in la[0])
        + ", at end "
        + "/".join(f"{x:.2f}" for x in la[1]),
        versions_line(vers),
        "",
        "(1) model affinity vs plain routing, same trace, fresh farm each",
        f"models    {args.models} tiny SD1.5 checkpoints (build_sd15, own seeds), "
        f"{r['sizes']['weight_bytes'] / MIB:.2f} MiB weights, "
        f"{r['sizes']['disk_bytes'] / MIB:.2f} MiB on disk each",
        f"workers   {args.workers} CPU workers, RENDERFARM_CACHE_RAM_MB={r['sizes']['budget_mb']} "
        f"each (holds {args.capacity} models, not {args.capacity + 1}), "
        f"OMP_NUM_THREADS={args.torch_threads}; each preloads "
        f"{WARMUP_MODEL!r} (not in the trace; not counted)",
        f"trace     {args.jobs} txt2img jobs, 64x64, {args.steps} steps, Zipf s={args.zipf_s:g} "
        f"seed {args.seed}; per model: " + ", ".join(f"{m} {c}" for m, c in r["trace_counts"]),
        "arrivals  "
        + " and ".join(arrival_name(rate, spec=spec) for spec, rate in r["rates"].items())
        + "; "
        f"heartbeat {args.heartbeat_s:g} s, and one at every cache change (the dispatcher "
        "sees the caches through them)",
        "routing   affinity: `renderfarm scheduler` (renderfarm.localfarm.start_scheduler), "
        f"RENDERFARM_AFFINITY_WAIT_S={args.affinity_wait_s:g}",
        "          plain: RENDERFARM_AFFINITY_WAIT_S=0 and a Dispatcher subclass whose choose() "
        "takes the next idle able worker in rotating order; no warm round",
        "",
    ]
    runs = r["runs"]
    width = 13

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"{name:30}" + "".join(f"{c:>{width}}" for c in cells))

    row("arrivals", [arrival_name(v["arrival_rate"], short=True) for v in runs])
    row("routing", [v["routing"] for v in runs])
    row("model loads (cache.loads)", [str(v["loads"]) for v in runs])
    row("  cache hits", [str(v["hits"]) for v in runs])
    row(f"  {args.cache_policy} replay of each worker", [str(v["replay_loads"]) for v in runs])
    row("  Belady, same assignment", [str(v["belady_given_assignment"]) for v in runs])
    row("  misses, other worker held it", [str(v["misses_held_elsewhere"]) for v in runs])
    row("  misses, no worker held it", [str(v["misses_held_nowhere"]) for v in runs])
    row("  loads per worker", ["/".join(str(w["loads"]) for w in v["per_worker"]) for v in runs])
    row("  jobs per worker", ["/".join(str(w["jobs"]) for w in v["per_worker"]) for v in runs])
    for label, key in (
        ("wait to dispatch", "wait_dispatch_s"),
        ("wait to start", "wait_start_s"),
        ("run time on the worker", "service_s"),
        ("created -> finished", "turnaround_s"),
    ):
        for q in ("mean", "p95"):
            row(f"{label} {q} s", [f"{v[key][q]:.2f}" for v in runs])
    row("makespan s", [f"{v['makespan_s']:.1f}" for v in runs])
    row("jobs/min (jobs / makespan)", [f"{args.jobs / v['makespan_s'] * 60:.1f}" for v in runs])
    row("start-order inversions", [str(v["start_order_inversions"]) for v in runs])
    row("other processes' CPU share", [f"{v['other_load']['other_share']:.0%}" for v in runs])
    lines += [
        "",
        f"lower bound on loads: {b['compulsory']} (compulsory: distinct models in the trace); "
        f"{b['pooled_belady_in_order']} if jobs start in submission order "
        f"(Belady, one pooled cache of {args.workers}x{args.capacity} models)",
    ]
    for spec, rate in r["rates"].items():
        a, p = (
            next(v for v in runs if v["arrival"] == spec and v["routing"] == x)
            for x in ("affinity", "plain")
        )
        lines.append(
            f"{arrival_name(rate, short=True)}: loads/compulsory affinity "
            f"{a['loads'] / b['compulsory']:.2f}x, plain {p['loads'] / b['compulsory']:.2f}x; "
            "plain/affinity loads "
            f"{p['loads'] / max(1, a['loads']):.2f}x, mean wait to start "
            f"{a['wait_start_s']['mean']:.2f} s vs {p['wait_start_s']['mean']:.2f} s"
        )
    for v in runs:
        name = f"{arrival_name(v['arrival_rate'], short=True)}/{v['routing']}"
        if v["replay_loads"] != v["loads"]:
            lines.append(
                f"note: {name}: the workers counted {v['loads']} loads but a replay of "
                f"their jobs gives {v['replay_loads']} ("
                + (
                    "the replay's load times are per-model medians, not each load's"
                    if args.cache_policy == "cost"
                    else f"the budget did not hold exactly {args.capacity} models?"
                )
                + ")"
            )
        over = sum(w["over_budget_events"] for w in v["per_worker"])
        if over:
            lines.append(f"note: {name}: {over} over-budget events in the worker caches")

    lines += [
        "",
        "2 cores shared with other work: timings are noisy (see the load averages and the "
        "other processes' CPU share above); loads and hits do not depend on timing as much, "
        "but which worker is idle first does.",
    ]
    print("\n".join(lines), flush=True)
    return {
        "machine": {**machine, "loadavg_start": la[0], "loadavg_end": la[1]},
        "versions": vers,
        "config": config(args),
        "sizes": r["sizes"],
        "trace": r["trace"],
        "bounds": b,
        "arrival_rates": r["rates"],
        "runs": r["runs"],
    }


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m bench.bench_scheduler", __doc__)
    p.add_argument("--jobs", type=int, default=60, help="jobs in the trace (default 60)")
    p.add_argument("--models", type=int, default=6, help="checkpoints in the trace (default 6)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (default 1.1)")
    p.add_argument("--seed", type=int, default=7, help="trace and weights seed (default 7)")
    p.add_argument("--steps", type=int, default=2, help="steps per job (default 2)")
    p.add_argument("--workers", type=int, default=2, help="CPU workers (default 2)")
    p.add_argument(
        "--capacity", type=int, default=2, help="models a worker cache holds (default 2)"
    )
    p.add_argument(
        "--arrivals",
        default="0,60%",
        help="comma-separated arrival patterns, each run with both routings: 0 = all jobs "
        "posted at once; R = a steady R jobs/s; P%% = a steady P%% of the jobs/makespan the "
        "burst runs before it reached (default 0,60%%)",
    )
    p.add_argument(
        "--affinity-wait-s",
        type=float,
        default=3.0,
        help="RENDERFARM_AFFINITY_WAIT_S of the affinity runs (default 3, the farm's)",
    )
    p.add_argument(
        "--cache-policy",
        choices=get_args(PolicyName),
        default="cost",
        help="RENDERFARM_CACHE_POLICY of every worker (default cost, the farm's)",
    )
    p.add_argument(
        "--heartbeat-s", type=float, default=2.0, help="RENDERFARM_HEARTBEAT_S (default 2)"
    )
    p.add_argument(
        "--torch-threads",
        type=int,
        help="OMP_NUM_THREADS per worker (default: usable cores / workers, at least 1)",
    )
    p.add_argument("--poll-s", type=float, default=0.25, help="trace progress poll interval (0.25)")
    p.add_argument("--trace-timeout", type=float, default=600, help="seconds per trace run (600)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, models)")
    p.add_argument("--plain-dispatcher", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 1 <= args.jobs <= 500:
        p.error("--jobs must be 1..500")
    if args.models < 1 or args.workers < 1 or args.capacity < 1:
        p.error("--models, --workers and --capacity must be at least 1")
    args.arrivals = [x.strip() for x in str(args.arrivals).split(",") if x.strip()]
    try:
        numbers = [float(x.removesuffix("%")) for x in args.arrivals]
    except ValueError:
        p.error("--arrivals: numbers (jobs/s) or percentages, e.g. 0,60%")
    if any(x < 0 for x in numbers):
        p.error("--arrivals must not be negative")
    if not 1 <= len(args.arrivals) <= 7 or len(set(args.arrivals)) != len(args.arrivals):
        p.error("--arrivals takes 1 to 7 different entries")
    for i, x in enumerate(args.arrivals):
        if x.endswith("%") and not any(float(y) == 0 for y in args.arrivals[:i] if "%" not in y):
            p.error(f"--arrivals {x}: a percentage needs a burst (0) listed before it")
    if args.torch_threads is None:
        args.torch_threads = max(1, len(os.sched_getaffinity(0)) // args.workers)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plain_dispatcher:
        return run_plain_dispatcher()
    redis_proc = None
    farms: list[Farm] = []
    with run_dir("renderfarm-bench-sched-", args.keep, "logs, models, redis data", log) as tmp:
        try:
            la_start = os.getloadavg()
            models_dir = tmp / "models"
            log(f"writing {args.models + 1} models to {models_dir}")
            names = write_models(models_dir, args.models, args.seed)
            sizes = cache_budget_mb(models_dir, names, args.capacity)
            trace_idx, ranks = zipf_trace(args.models, args.jobs, args.zipf_s, args.seed)
            trace = [names[i] for i in trace_idx]
            counts = sorted(((m, trace.count(m)) for m in names), key=lambda mc: -mc[1])

            redis_port = localfarm.free_port()
            redis_proc = localfarm.start_redis(redis_port, tmp / "redis")
            base = {
                "RENDERFARM_MODELS_DIR": str(models_dir),
                "RENDERFARM_STORAGE_URL": f"file://{tmp / 'outputs'}",
                "RENDERFARM_CACHE_RAM_MB": str(sizes["budget_mb"]),
                "RENDERFARM_HEARTBEAT_S": str(args.heartbeat_s),
                "RENDERFARM_CACHE_POLICY": args.cache_policy,
                # torch uses every core per process by default; several workers on a small
                # shared machine then oversubscribe it and renders slow down 10-100x.
                "OMP_NUM_THREADS": str(args.torch_threads),
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
            runs: list[dict[str, Any]] = []
            rates: dict[str, float] = {}
            db = 0
            for spec in args.arrivals:
                rate = rates[spec] = resolve_rate(spec, runs, args.jobs)
                for label, wait_s in (("affinity", args.affinity_wait_s), ("plain", 0.0)):
                    db += 1  # a Redis DB of its own: fresh records, queues and heartbeats
                    env = {
                        **base,
                        "RENDERFARM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/{db}",
                        "RENDERFARM_AFFINITY_WAIT_S": str(wait_s),
                    }
                    name = f"{arrival_name(rate, short=True)}/{label}"
                    log(
                        f"({name}) starting a farm: {args.workers} fresh workers, "
                        "dispatcher, dashboard"
                    )
                    farm = Farm(f"{db}-{label}", env, tmp, args.workers, label, WARMUP_MODEL)
                    farms.append(farm)
                    log(
                        f"({name}) running the trace: {args.jobs} jobs, "
                        + arrival_name(rate, spec=spec)
                    )
                    result = run_trace(farm, trace, rate, args)
                    farm.close()
                    farms.remove(farm)
                    runs.append(
                        {
                            "arrival": spec,
                            "arrival_rate": rate,
                            "routing": label,
                            **analyse(result, args.capacity, args.cache_policy),
                        }
                    )
                    log(
                        f"({name}) {runs[-1]['loads']} loads, "
                        f"makespan {runs[-1]['makespan_s']:.1f} s"
                    )

            run = {
                "loadavg": (la_start, os.getloadavg()),
                "sizes": sizes,
                "trace": {"models": trace, "zipf_ranks": dict(zip(names, ranks, strict=True))},
                "trace_counts": counts,
                "bounds": bounds(trace, args.workers, args.capacity),
                "rates": rates,
                "runs": runs,
            }
            write_json(args.json, report(args, run))
            return 0
        except KeyboardInterrupt:
            log("\ninterrupted; stopping everything the benchmark started")
            return 130
        except Exception:
            for farm in farms:
                for f in sorted(farm.logs.glob("*.log")):
                    log(f"--- {f} (last lines)\n{tail(f)}")
            raise
        finally:
            with sigint_ignored():
                for farm in farms:
                    farm.close()
                localfarm.stop(redis_proc)


if __name__ == "__main__":
    sys.exit(main())
