"""Submission throughput: `POST /api/v1/jobs` against raw Celery `send_task`, in one run.

    .venv/bin/python -m bench.bench_submit [--n 500] [--rounds 3] [--clients 1,4]
                                           [--processes 1,2] [--json PATH]

A redis-server on a free loopback port, the demo models in a temp store and the real
dashboard (`renderfarm dashboard`, waitress) as a process; no dispatcher and no workers, so
nothing runs the jobs. For each --processes count P (`RENDERFARM_HTTP_PROCESSES`: the
dashboard's server processes; one dashboard per count, every side measured again with it)
and each --clients count K, K threads each make --n calls per round, one keep-alive session
each:
  api     POST /api/v1/jobs as a member (a Bearer token: accounts, quotas and validation
          on): the dashboard parses and validates the spec, looks its model up in the store,
          checks the quota, writes the job record and adds it to the owner's pending set;
  inproc  `JobControl.submit` in this process (the same work without HTTP and Flask);
  celery  raw `send_task(RUN_JOB, queue="bench")` with the farm's Celery configuration
          (serialise, LPUSH to Redis, a task-sent event): the baseline, what a plain Celery
          producer pays;
  floor   GET /api/v1/me with the same token: the HTTP stack's own ceiling (requests,
          waitress, Flask, the token check, a JSON reply) with no job work at all;
  empty   the same POST (FarmClient.submit) to a Flask app that only parses the body and
          answers 202 with an id, served like the dashboard (`dashboard.server.serve`, the
          same process count): the HTTP stack with nothing of the farm in it;
  lean    the api side's POST sent with urllib3 directly (the library under `requests`):
          what the client's own library costs, as a leaner client would send it.
Sides alternate order per round; the figure is the median round. Also printed: Redis
commands per call (INFO commandstats) for each side. The queue grows by every job posted, so
a submission whose cost grew with the queue would show in the later rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import urllib3

from bench.common import (
    api_token,
    config,
    log,
    machine_info,
    machine_line,
    parser,
    run_dir,
    sigint_ignored,
    tail,
    write_json,
)
from renderfarm import localfarm
from shared.client import FarmClient

OWNER = "bench-submit"
SPEC = {"model": "demo-sd15", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


def member_token(redis_url: str) -> str:
    """A member's token, its queue quota raised: the benchmark queues a lot."""
    from redis import Redis

    from dashboard.accounts import Accounts
    from shared.config import Settings

    token = api_token(redis_url, OWNER, "member")
    accounts = Accounts(Redis.from_url(redis_url), Settings(redis_url=redis_url))
    accounts.set_limits(OWNER, max_queued=10**9)
    return token


def input_png(side: int) -> str:
    """A `side`-pixel square PNG, base64: a gradient with noise, about as large as a photo's
    (580 KiB at 512)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:side, 0:side]
    rgb = np.stack([x * 255 / side, y * 255 / side, (x + y) % 256], -1)
    rgb = rgb + np.random.default_rng(0).normal(0, 12, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def in_threads(clients: int, call: Any, n: int) -> float:
    """Seconds for `clients` threads to make `n` calls each (`call(i)` builds thread i's)."""
    fns = [call(i) for i in range(clients)]
    start = threading.Barrier(clients + 1)

    def run(fn: Any) -> None:
        start.wait()
        for _ in range(n):
            fn()

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - began


def empty_app() -> Any:
    """A Flask app with the dashboard's route for a submission, doing none of its work."""
    from flask import Flask, jsonify, request

    app = Flask("empty")
    app.extensions["renderfarm.stopping"] = threading.Event()  # as dashboard.app sets it

    @app.post("/api/v1/jobs")
    def accept():
        request.get_json()
        return jsonify(id=uuid.uuid4().hex, status="queued"), 202

    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    return app


def serve_empty(port: int, processes: int) -> None:
    from dashboard.server import serve
    from shared.config import Settings

    serve(empty_app, "127.0.0.1", port, Settings(http_processes=processes))


def start_empty(port: int, processes: int, log: Path) -> subprocess.Popen:
    code = f"from bench.bench_submit import serve_empty; serve_empty({port}, {processes})"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/healthz"
    localfarm.wait_for(lambda: urlopen(url, timeout=1).status == 200, 30, "empty app", proc)
    return proc


def measure(
    url: str, empty_url: str, redis_url: str, models_dir: Path, tmp: Path, args: argparse.Namespace
):
    from redis import Redis

    from scheduler.celery_app import RUN_JOB, make_celery
    from scheduler.control import JobControl
    from shared.config import Settings
    from shared.jobspec import parse_spec
    from shared.storage import open_storage
    from shared.vocabulary import Priority

    settings = Settings(
        redis_url=redis_url, models_dir=models_dir, storage_url=f"file://{tmp / 'outputs'}"
    )
    token = member_token(redis_url)
    control = JobControl(settings, storage=open_storage(settings))
    celery = make_celery(settings)
    redis = Redis.from_url(redis_url)
    sessions: list[FarmClient] = []
    pools: list[urllib3.HTTPConnectionPool] = []

    def session(at: str) -> FarmClient:
        """A keep-alive session for one client thread, closed at the end."""
        sessions.append(FarmClient(at, token))
        return sessions[-1]

    def api(_: int):
        client = session(url)
        return lambda: client.submit(SPEC)

    def inproc(_: int):
        return lambda: control.submit(parse_spec(SPEC, settings), OWNER, Priority.NORMAL, None)

    def send(_: int):
        def call() -> None:
            job_id = uuid.uuid4().hex
            celery.send_task(
                RUN_JOB,
                args=[job_id, 1],
                queue="bench",
                task_id=f"{job_id}.1",
                priority=Priority.NORMAL.celery,
            )

        return call

    def floor(_: int):
        client = session(url)
        return client.me

    def empty(_: int):
        client = session(empty_url)
        return lambda: client.submit(SPEC)

    def lean(_: int):
        host, port = url.removeprefix("http://").split(":")
        pool = urllib3.HTTPConnectionPool(host, int(port), maxsize=1)
        pools.append(pool)
        body = json.dumps(SPEC).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

        def call() -> None:
            resp = pool.request("POST", "/api/v1/jobs", body=body, headers=headers)
            if resp.status != 202:
                raise RuntimeError(f"POST /api/v1/jobs: {resp.status} {resp.data[:200]!r}")
            json.loads(resp.data)

        return call

    image = input_png(args.image_side) if args.image_side else ""
    image_spec = {**SPEC, "kind": "img2img", "init_image": image}

    def api_image(_: int):
        client = session(url)
        return lambda: client.submit(image_spec)

    def send_image(_: int):
        def call() -> None:
            job_id = uuid.uuid4().hex
            celery.send_task(RUN_JOB, args=[job_id, 1, image], queue="bench", task_id=job_id)

        return call

    sides = {
        "api": api,
        "inproc": inproc,
        "celery": send,
        "floor": floor,
        "empty": empty,
        "lean": lean,
    }
    calls = dict.fromkeys(sides, args.n)
    if image:
        sides |= {"api_image": api_image, "celery_image": send_image}
        calls |= dict.fromkeys(("api_image", "celery_image"), max(1, args.n // 10))
    results: dict[str, Any] = {}
    for clients in args.clients:
        for side in sides.values():  # connections, imports, first requests: not counted
            in_threads(clients, side, 10)
        rates: dict[str, list[float]] = {k: [] for k in sides}
        commands: dict[str, float] = {}
        for r in range(args.rounds):
            for name in list(sides) if r % 2 == 0 else list(reversed(sides)):
                redis.config_resetstat()
                seconds = in_threads(clients, sides[name], calls[name])
                stats = redis.info("commandstats")
                made = sum(v["calls"] for k, v in stats.items() if "config" not in k)
                commands[name] = made / (clients * calls[name])
                rates[name].append(clients * calls[name] / seconds)
                # Nothing consumes the baseline's queue: images in it would fill Redis.
                redis.delete(*redis.scan_iter(match="bench*"), "bench")
        per_s = {k: statistics.median(v) for k, v in rates.items()}
        results[str(clients)] = {
            "per_s": per_s,
            "per_s_rounds": rates,
            "redis_commands_per_call": commands,
            "api_vs_celery": per_s["api"] / per_s["celery"],
            "inproc_vs_celery": per_s["inproc"] / per_s["celery"],
            "floor_vs_celery": per_s["floor"] / per_s["celery"],
            "empty_vs_celery": per_s["empty"] / per_s["celery"],
            "lean_vs_celery": per_s["lean"] / per_s["celery"],
        }
        if image:
            results[str(clients)]["image_vs_celery"] = per_s["api_image"] / per_s["celery_image"]
        log(f"{clients} client(s): " + ", ".join(f"{k} {v:.0f}/s" for k, v in per_s.items()))
    recorded = int(redis.zcard("rf:jobs"))
    for client in sessions:
        client.close()
    for pool in pools:
        pool.close()
    celery.close()
    redis.flushdb()
    return results, recorded


def table(results: dict[str, Any], title: str, header: str, row: Any) -> list[str]:
    """A titled table of `row(figures)` for each process and client count."""
    lines = ["", title, f"{'server processes':>16} {'clients':>7} {header}"]
    for processes, by_clients in results.items():
        for clients, r in by_clients.items():
            lines.append(f"{processes:>16} {clients:>7} {row(r)}")
    return lines


def report(args: argparse.Namespace, results: dict[str, Any], recorded: int, la) -> dict:
    """`results`: by server processes, then by clients."""
    machine = machine_info()
    lines = [
        "Submission throughput (bench/bench_submit.py)",
        machine_line(machine),
        f"load average {la[0]:.2f} at start, {la[1]:.2f} at end; {recorded} jobs recorded",
        f"{args.n} calls per client per round, {args.rounds} rounds, medians",
        "",
        f"{'server processes':>16} {'clients':>7} {'POST /api/v1/jobs':>18} "
        f"{'JobControl.submit':>18} {'send_task':>10} {'GET /api/v1/me':>15} "
        f"{'API/send_task':>14} {'floor/send_task':>16} {'empty app':>10} "
        f"{'empty/send_task':>16} {'Redis cmds api/celery':>22}",
    ]
    for processes, by_clients in results.items():
        for clients, r in by_clients.items():
            ps, cmds = r["per_s"], r["redis_commands_per_call"]
            lines.append(
                f"{processes:>16} {clients:>7} {ps['api']:>16.0f}/s {ps['inproc']:>16.0f}/s "
                f"{ps['celery']:>8.0f}/s {ps['floor']:>13.0f}/s {r['api_vs_celery']:>14.0%} "
                f"{r['floor_vs_celery']:>16.0%} {ps['empty']:>8.0f}/s "
                f"{r['empty_vs_celery']:>16.0%} {cmds['api']:>14.1f} / {cmds['celery']:.1f}"
            )
    lines += table(
        results,
        "the same POST from urllib3 directly (no requests): the client library's share",
        f"{'urllib3 POST':>13} {'requests POST':>14} {'urllib3/send_task':>18}",
        lambda r: (
            f"{r['per_s']['lean']:>11.0f}/s {r['per_s']['api']:>12.0f}/s "
            f"{r['lean_vs_celery']:>18.0%}"
        ),
    )
    if args.image_side:
        lines += table(
            results,
            f"img2img with a {args.image_side}x{args.image_side} PNG input "
            f"({max(1, args.n // 10)} calls per client per round)",
            f"{'POST /api/v1/jobs':>18} {'send_task + image':>18} {'API/send_task':>14}",
            lambda r: (
                f"{r['per_s']['api_image']:>16.0f}/s "
                f"{r['per_s']['celery_image']:>16.0f}/s {r['image_vs_celery']:>14.0%}"
            ),
        )
    print("\n".join(lines), flush=True)
    return {
        "machine": {**machine, "loadavg_start": la[0], "loadavg_end": la[1]},
        "config": config(args),
        "results": results,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m bench.bench_submit", __doc__)
    p.add_argument("--n", type=int, default=500, help="calls per client per round (500)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per side (3)")
    p.add_argument("--clients", default="1,4", help="comma-separated client counts (1,4)")
    p.add_argument(
        "--processes", default="1,2", help="comma-separated dashboard process counts (1,2)"
    )
    p.add_argument(
        "--image-side",
        type=int,
        default=512,
        help="img2img sides: a PNG this many pixels square (512; 0: none)",
    )
    p.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in str(args.clients).split(",") if c.strip()]
    args.processes = [int(c) for c in str(args.processes).split(",") if c.strip()]
    counts = args.clients + args.processes
    if args.n < 1 or args.rounds < 1 or not args.clients or not args.processes or min(counts) < 1:
        p.error("--n, --rounds and every --clients and --processes count must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from worker.demo_models import write_demo_models

    with run_dir("renderfarm-bench-submit-", False) as tmp:
        redis_proc = dashboard = empty = None
        try:
            la_start = os.getloadavg()[0]
            models_dir = tmp / "models"
            write_demo_models(models_dir)
            port = localfarm.free_port()
            redis_proc = localfarm.start_redis(port, tmp / "redis")
            redis_url = f"redis://127.0.0.1:{port}/0"
            env = {
                "RENDERFARM_REDIS_URL": redis_url,
                "RENDERFARM_MODELS_DIR": str(models_dir),
                "RENDERFARM_STORAGE_URL": f"file://{tmp / 'outputs'}",
            }
            results, recorded = {}, 0
            for processes in args.processes:
                empty_port = localfarm.free_port()
                empty = start_empty(empty_port, processes, tmp / "empty.log")
                http = localfarm.free_port()
                dashboard = localfarm.start_dashboard(
                    "127.0.0.1",
                    http,
                    {**env, "RENDERFARM_HTTP_PROCESSES": str(processes)},
                    log=tmp / "dashboard.log",
                )
                log(f"dashboard with {processes} server process(es)")
                results[str(processes)], jobs = measure(
                    f"http://127.0.0.1:{http}",
                    f"http://127.0.0.1:{empty_port}",
                    redis_url,
                    models_dir,
                    tmp,
                    args,
                )
                recorded += jobs
                localfarm.stop(dashboard, empty)
                dashboard = empty = None
            figures = report(args, results, recorded, (la_start, os.getloadavg()[0]))
            write_json(args.json, figures)
            return 0
        except KeyboardInterrupt:
            return 130
        except Exception:
            log(f"--- dashboard log\n{tail(tmp / 'dashboard.log')}")
            raise
        finally:
            with sigint_ignored():
                localfarm.stop(dashboard, empty, redis_proc)


if __name__ == "__main__":
    sys.exit(main())
