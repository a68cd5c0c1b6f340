"""The `renderfarm` command: one entry point for every component."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from dashboard import accounts_cli
from shared.config import HARDWARE_CLASSES, get_settings


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.main import run_worker
    from worker.runner import DeviceUnavailable

    try:
        run_worker(args.hardware, args.loglevel, args.preload, args.device)
    except DeviceUnavailable as exc:
        print(f"renderfarm worker: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from scheduler.dispatcher import Dispatcher

    Dispatcher(get_settings()).run_forever()
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    if args.command == "drain":
        body = {"drain": not args.undo}
        print(json.dumps(_api("POST", f"{args.api}/api/v1/workers/{args.target}/drain", body)))
        return 0
    path = f"{args.api}/api/v1/jobs/{args.target}/{args.command}"
    body = {"priority": args.priority} if args.command == "priority" else {}
    job = _api("POST", path, body)
    print(f"{job['id']} {job['status']} priority={job['priority']}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.app import create_app

    create_app(get_settings()).run(host=args.host, port=args.port, threaded=True)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    from redis import Redis

    from scheduler.fleet import live_workers

    fleet = live_workers(Redis.from_url(get_settings().redis_url))
    if args.json:
        print(json.dumps(fleet, indent=2))
        return 0
    gib = 2**30
    print(
        f"{'worker':<34} {'class':<9} {'device':<28} {'memory used/total':>18} "
        f"{'cache used/budget':>18} {'models':>6} {'done':>5}  job"
    )
    for w in fleet:
        job = w["current_job"] or "-"
        if w.get("stalled_job"):
            job += " (stalled: given up, running elsewhere)"
        print(
            f"{w['name']:<34} {w['hardware']:<9} {w['device_name'][:28]:<28} "
            f"{w['memory_used'] / gib:>8.1f}/{w['memory_total'] / gib:<6.1f}GiB "
            f"{w['cache_bytes'] / gib:>8.2f}/{w['cache_budget'] / gib:<6.1f}GiB "
            f"{len(w['models']):>6} {w['jobs_done']:>5}  {job}"
        )
    if not fleet:
        print("(no live workers)")
    return 0


def cmd_demo_models(args: argparse.Namespace) -> int:
    from worker.demo_models import write_demo_models

    models_dir = args.models_dir or get_settings().models_dir
    written = write_demo_models(models_dir, force=args.force)
    print(f"demo models in {models_dir.resolve()}: wrote {written or 'nothing (all present)'}")
    return 0


def _api(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{method} {url}: {exc.code} {exc.read().decode()}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    spec = {
        "prompt": args.prompt,
        "model": args.model,
        "steps": args.steps,
        "width": args.width,
        "height": args.height,
        "batch_size": args.batch_size,
        "sampler": args.sampler,
        "cfg_scale": args.cfg_scale,
        "hardware": args.hardware,
        "negative_prompt": args.negative_prompt,
        "priority": args.priority,
        "owner": args.owner,
    }
    if args.seed is not None:
        spec["seed"] = args.seed
    job = _api("POST", f"{args.api}/api/v1/jobs", spec)
    print(job["id"], flush=True)
    if not (args.wait or args.out):
        return 0
    while job["status"] in ("queued", "running"):
        time.sleep(0.2)
        job = _api("GET", f"{args.api}/api/v1/jobs/{job['id']}")
    print(json.dumps(job, indent=2))
    if job["status"] != "succeeded":
        return 1
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for out in job["outputs"]:
            path = args.out / f"{job['id']}-{out['index']}.png"
            with urllib.request.urlopen(f"{args.api}{out['url']}") as resp:
                path.write_bytes(resp.read())
            print(path)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from shared import localfarm
    from worker.demo_models import write_demo_models

    settings = get_settings()
    env = {
        "RENDERFARM_REDIS_URL": settings.redis_url,
        "RENDERFARM_STORAGE_URL": settings.storage_url,
        "RENDERFARM_MODELS_DIR": str(settings.models_dir.resolve()),
    }
    # Stop everything on Ctrl-C and SIGTERM, so no child is left behind — also when started
    # from a shell that ignores SIGINT for background jobs (Python then leaves it ignored).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    procs: list = []
    redis_proc = None
    try:
        if not localfarm.redis_alive(settings.redis_url):
            url = urlparse(settings.redis_url)
            if url.hostname not in ("127.0.0.1", "localhost"):
                raise SystemExit(f"cannot reach Redis at {settings.redis_url}")
            print(f"starting redis-server on 127.0.0.1:{url.port or 6379} (appendonly yes)")
            redis_proc = localfarm.start_redis(url.port or 6379, Path("var/redis").resolve())
            procs.append(redis_proc)
        written = write_demo_models(settings.models_dir)
        print(f"model store {settings.models_dir.resolve()} (new demo models: {written or 'none'})")
        procs.append(localfarm.start_scheduler(env))
        for hardware in args.workers:
            procs.append(localfarm.start_worker(hardware, env))
        procs.append(localfarm.start_dashboard(args.host, args.port, env))
        print(
            f"\nrenderfarm is up: http://{args.host}:{args.port}/  "
            f"(storage {settings.storage_url}) — Ctrl-C stops it\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a farm process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping renderfarm")
        return 0
    finally:
        # Redis (if we started it) goes last: the others need it to shut down cleanly.
        localfarm.stop(*procs[1:] if redis_proc else procs)
        localfarm.stop(redis_proc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="renderfarm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run a local farm: redis, a CPU worker, the dashboard")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        nargs="+",
        default=["cpu"],
        choices=HARDWARE_CLASSES,
        help="hardware classes to start one worker each for",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("worker", help="run a worker for one hardware class")
    p.add_argument("--hardware", choices=HARDWARE_CLASSES, default="cpu")
    p.add_argument("--loglevel", default="INFO")
    p.add_argument(
        "--device",
        help="gpu workers: torch device, e.g. cuda:1 (default cuda:0); "
        "openvino workers: OpenVINO device, e.g. GPU (default RENDERFARM_OPENVINO_DEVICE)",
    )
    p.add_argument(
        "--preload",
        action="append",
        metavar="CHECKPOINT",
        help="load this checkpoint before taking jobs (repeatable)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("scheduler", help="run the dispatcher and reaper (one per farm)")
    p.set_defaults(func=cmd_scheduler)

    for name, text in (
        ("cancel", "cancel a queued or running job"),
        ("retry", "run a failed or canceled job again"),
        ("priority", "change the priority of a queued job"),
        ("drain", "let a worker finish its job and take no new ones"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("target", metavar="WORKER" if name == "drain" else "JOB_ID")
        p.add_argument("--api", default="http://127.0.0.1:8000")
        if name == "priority":
            p.add_argument("priority", choices=("high", "normal", "low"))
        if name == "drain":
            p.add_argument("--undo", action="store_true", help="take new jobs again")
        p.set_defaults(func=cmd_control)

    p = sub.add_parser("workers", help="list the live workers from their heartbeats")
    p.add_argument("--json", action="store_true", help="print the raw heartbeats")
    p.set_defaults(func=cmd_workers)

    p = sub.add_parser("dashboard", help="serve the dashboard and REST API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("submit", help="submit a txt2img job through the REST API")
    p.add_argument("prompt")
    p.add_argument("--api", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="demo-sd15")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--sampler", default="Euler a")
    p.add_argument("--seed", type=int)
    p.add_argument("--hardware", default="auto")
    p.add_argument("--priority", default="normal", choices=("high", "normal", "low"))
    p.add_argument("--owner", default=os.environ.get("USER", "anonymous"))
    p.add_argument("--wait", action="store_true", help="wait for the job to finish")
    p.add_argument("--out", type=Path, help="download the images into this folder")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("demo-models", help="write tiny random-weight demo models")
    p.add_argument("--models-dir", type=Path)
    p.add_argument("--force", action="store_true", help="rewrite models that exist")
    p.set_defaults(func=cmd_demo_models)
    accounts_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Nothing is ever fetched from a model hub: models come from the model store.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
