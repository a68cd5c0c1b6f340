"""`renderfarm up`: a whole local farm on this machine, stopped together by Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from dashboard.accounts import Accounts
from dashboard.accounts_cli import ensure_local_admin
from dashboard.server import listen
from renderfarm import localfarm
from renderfarm.supervisor import Supervisor
from shared.config import Settings, redis_client
from shared.sentinel import is_sentinel_url, without_password
from shared.vocabulary import Hardware


def cmd_up(args: argparse.Namespace) -> int:
    from worker.demo_models import write_demo_models

    settings = Settings()
    env = {
        "RENDERFARM_REDIS_URL": settings.redis_url,
        "RENDERFARM_STORAGE_URL": settings.storage_url,
        "RENDERFARM_MODELS_DIR": str(settings.models_dir.resolve()),
    }
    # Stop everything on Ctrl-C and SIGTERM, so no child is left behind — also when started
    # from a shell that ignores SIGINT for background jobs (Python then leaves it ignored).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    # Before anything starts: a second `up` would otherwise join the first one's Redis and
    # take its dashboard's answer for its own.
    try:
        for sock in listen(args.host, args.port):
            sock.close()
    except SystemExit as exc:
        raise SystemExit(f"{exc.code} (is a farm already up? --port picks another)") from None
    farm = Supervisor()
    redis = None  # the Redis this `up` started, if it started one
    try:
        if not localfarm.redis_alive(settings):
            url = urlparse(settings.redis_url)
            if is_sentinel_url(settings.redis_url):
                raise SystemExit(
                    f"cannot reach the Redis master {settings.redis_sentinel_master!r} through "
                    f"the sentinels at {without_password(settings.redis_url)}"
                )
            if url.hostname not in ("127.0.0.1", "localhost"):
                raise SystemExit(f"cannot reach Redis at {without_password(settings.redis_url)}")
            port, data = url.port or 6379, Path("var/redis").resolve()
            print(f"starting redis-server on 127.0.0.1:{port} (appendonly yes)")
            farm.add("redis-server", lambda: localfarm.start_redis(port, data))
            redis = farm.children[0]
        password = ensure_local_admin(
            Accounts(redis_client(settings), settings), settings.token_file
        )
        if password:
            print(
                f"created the local admin account: name admin, password {password}\n"
                f"(shown only now; its API token is in {settings.token_file}, which the "
                "renderfarm commands on this machine use)"
            )
        if settings.models_url:  # the bucket's models: a demo folder would be read by nothing
            print(f"model store {settings.models_url} (models arrive by renderfarm models push)")
        else:
            written = write_demo_models(settings.models_dir) or "none"
            print(f"model store {settings.models_dir.resolve()} (new demo models: {written})")
        farm.add("the scheduler", lambda: localfarm.start_scheduler(env))
        for hardware in args.workers:
            farm.add(f"the {hardware} worker", partial(localfarm.start_worker, hardware, env))
        farm.add("the dashboard", lambda: localfarm.start_dashboard(args.host, args.port, env))
        api = f"http://{args.host}:{args.port}"
        settings.api_file.parent.mkdir(parents=True, exist_ok=True)
        settings.api_file.write_text(api + "\n")
        print(
            f"\nrenderfarm is up: {api}/  (storage {settings.storage_url}) — Ctrl-C stops it\n",
            flush=True,
        )
        print(farm.watch(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "\nstopping renderfarm (a job in progress finishes first; Ctrl-C again: now)",
            flush=True,
        )
        return 0
    finally:
        # Redis (if we started it) goes last: the others need it to shut down cleanly. Each
        # of them bounds its own stop (a worker: its job in progress, the dashboard: its
        # grace); a second Ctrl-C is the way to stop sooner.
        others = [c.proc for c in farm.children if c is not redis and c.proc is not None]
        try:
            localfarm.stop(*others, timeout=None)
        except KeyboardInterrupt:  # asked again: stop waiting for them (a job in progress)
            print("stopping now", flush=True)
            for proc in others:
                proc.kill()
                proc.wait()
        for sig in (signal.SIGINT, signal.SIGTERM):  # Redis saves, however impatient we are
            signal.signal(sig, signal.SIG_IGN)
        localfarm.stop(redis.proc if redis else None)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run a local farm: redis, a CPU worker, the dashboard")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--workers",
        nargs="+",
        default=[Hardware.CPU],
        choices=[h.value for h in Hardware],
        help="hardware classes to start one worker each for",
    )
    p.set_defaults(func=cmd_up)
