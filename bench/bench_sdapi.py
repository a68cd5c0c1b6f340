"""50 concurrent blocking SD-WebUI txt2img calls against the farm, while the dashboard stays
responsive: GET /api/v1/jobs latency during the load vs idle (the baseline, same run).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.bench_sdapi [--calls 50] [--json out.json]

It starts its own redis-server, scheduler, CPU worker(s) and dashboard (waitress, as
`renderfarm dashboard` runs it; RENDERFARM_HTTP_PROCESSES, if set, is passed on) on loopback
with the demo models, and stops them on exit.
Each call is POST /sdapi/v1/txt2img (demo-sd15, 64x64, --steps) held open until its job is
done; a prober GETs /api/v1/jobs every --probe-ms meanwhile.
"""

from __future__ import annotations

import base64
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    api_token,
    config,
    loadavg,
    log,
    machine_info,
    machine_line,
    parser,
    percentile,
    run_dir,
    sigint_ignored,
    tail,
    write_json,
)
from dashboard.server import process_count
from renderfarm import localfarm
from shared.config import Settings


def parse_args(argv: list[str] | None):
    p = parser("bench_sdapi", __doc__)
    p.add_argument("--calls", type=int, default=50, help="concurrent txt2img calls")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="CPU workers in the farm")
    p.add_argument("--probe-ms", type=float, default=100.0)
    p.add_argument("--idle-probes", type=int, default=40)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", type=Path, help="write the figures here")
    return p.parse_args(argv)


def stats(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "max_ms": max(ms),
        "mean_ms": statistics.fmean(ms),
    }


def probe(session: requests.Session, url: str) -> float:
    start = time.perf_counter()
    resp = session.get(f"{url}/api/v1/jobs", params={"limit": 50}, timeout=30)
    resp.raise_for_status()
    return time.perf_counter() - start


def start_farm(tmp, args, procs: list) -> tuple[dict[str, str], str]:
    from worker.demo_models import write_demo_models

    write_demo_models(tmp / "models")
    port = localfarm.free_port()
    procs.append(localfarm.start_redis(port, tmp / "redis"))
    env = {
        "RENDERFARM_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "RENDERFARM_MODELS_DIR": str(tmp / "models"),
        "RENDERFARM_STORAGE_URL": f"file://{tmp / 'outputs'}",
        "RENDERFARM_SDAPI_DEFAULT_MODEL": "demo-sd15",
        "RENDERFARM_TORCH_THREADS": "1",
        # The one member holds every call open at once (16 per server process by default).
        "RENDERFARM_HTTP_HELD_PER_ACCOUNT": str(args.calls),
    }
    procs.append(localfarm.start_scheduler(env, log=tmp / "scheduler.log"))
    for i in range(args.workers):
        procs.append(localfarm.start_worker("cpu", env, log=tmp / f"worker-{i}.log"))
    api = localfarm.free_port()
    procs.append(localfarm.start_dashboard("127.0.0.1", api, env, log=tmp / "dashboard.log"))
    return env, f"http://127.0.0.1:{api}"


def member_token(redis_url: str) -> str:
    """A token of a member account, as an SD-WebUI client's user would have."""
    return api_token(redis_url, "sd-bench", "member")


def run(args, url: str, token: str) -> dict[str, Any]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    # The member's own quota (100 queued) holds 50 calls; wait until a worker is up.
    localfarm.wait_for(
        lambda: session.get(f"{url}/api/v1/workers").json()["workers"], 120, "worker"
    )
    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": args.steps}
    warm = session.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": 1}, timeout=300)
    warm.raise_for_status()
    idle = [probe(session, url) for _ in range(args.idle_probes)]

    stop, during = threading.Event(), []

    def prober() -> None:
        s = requests.Session()
        s.headers.update(session.headers)
        while not stop.is_set():
            during.append(probe(s, url))
            stop.wait(args.probe_ms / 1000)

    def call(i: int) -> tuple[int, float, int]:
        s = requests.Session()
        s.headers.update(session.headers)
        start = time.perf_counter()
        resp = s.post(f"{url}/sdapi/v1/txt2img", json={**body, "seed": 100 + i}, timeout=1800)
        images = resp.json().get("images", []) if resp.ok else []
        ok = resp.status_code == 200 and len(images) == 1 and base64.b64decode(images[0])[:4]
        return resp.status_code if ok else -resp.status_code, time.perf_counter() - start, i

    thread = threading.Thread(target=prober, daemon=True)
    thread.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.calls) as pool:
        results = list(pool.map(call, range(args.calls)))
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    return {"idle": idle, "during": during, "results": results, "wall_s": wall}


def report(args, figures: dict[str, Any], machine: dict[str, Any], load) -> dict[str, Any]:
    done = [r for r in figures["results"] if r[0] == 200]
    calls = stats([r[1] for r in figures["results"]])
    idle, during = stats(figures["idle"]), stats(figures["during"])
    ratio = during["p50_ms"] / idle["p50_ms"]
    print(machine_line(machine, ram=True) + f", load average {load[0]} -> {load[1]}")
    processes = process_count(Settings())  # as the dashboard reads RENDERFARM_HTTP_PROCESSES
    print(f"server    waitress x {processes} process(es), {args.calls} blocking POST "
          f"/sdapi/v1/txt2img at once, "
          f"{args.workers} CPU worker(s), demo-sd15 64x64 {args.steps} steps")  # fmt: skip
    print(f"completed {len(done)}/{args.calls} with an image in {figures['wall_s']:.1f} s "
          f"({len(done) / figures['wall_s'] * 60:.0f} jobs/min)")  # fmt: skip
    c = calls
    print(f"call      p50 {c['p50_ms']:.0f} ms  p95 {c['p95_ms']:.0f} ms  max {c['max_ms']:.0f} ms")
    for name, s in (("idle", idle), ("under load", during)):
        print(f"GET /api/v1/jobs {name:10s} n={s['n']:3d}  p50 {s['p50_ms']:.1f} ms  "
              f"p95 {s['p95_ms']:.1f} ms  max {s['max_ms']:.1f} ms")  # fmt: skip
    print(f"ratio     /api/v1/jobs p50 under load / idle = {ratio:.2f}x")
    return {
        "config": config(args),
        "http_processes": processes,
        "machine": machine,
        "loadavg": load,
        "completed": len(done),
        "statuses": sorted({r[0] for r in figures["results"]}),
        "wall_s": figures["wall_s"],
        "call": calls,
        "jobs_idle": idle,
        "jobs_under_load": during,
        "ratio_p50": ratio,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    procs: list = []
    with run_dir("renderfarm-bench-sdapi-", args.keep, "logs, outputs") as tmp:
        try:
            before = loadavg()
            env, url = start_farm(tmp, args, procs)
            figures = run(args, url, member_token(env["RENDERFARM_REDIS_URL"]))
            figures_json = report(args, figures, machine_info(), (before, loadavg()))
            write_json(args.json, figures_json)
            return 0 if figures_json["completed"] == args.calls else 1
        except KeyboardInterrupt:
            return 130
        except Exception:
            log(f"--- dashboard.log\n{tail(tmp / 'dashboard.log')}")
            raise
        finally:
            with sigint_ignored():
                localfarm.stop(*reversed(procs))


if __name__ == "__main__":
    sys.exit(main())
