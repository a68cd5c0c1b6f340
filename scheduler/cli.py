"""`renderfarm scheduler` (the dispatcher and reaper) and `renderfarm workers` (the fleet)."""

from __future__ import annotations

import argparse
import json

from shared.config import Settings, redis_client


def cmd_scheduler(args: argparse.Namespace) -> int:
    from scheduler.dispatcher import Dispatcher
    from scheduler.notify import Notifier

    settings = Settings()
    Notifier(redis_client(settings), settings).start()  # webhooks, on its own thread
    Dispatcher(settings).run_forever()
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    from scheduler.fleet import live_workers

    fleet = live_workers(redis_client(Settings()))
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


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scheduler", help="run the dispatcher and reaper (one per farm)")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("workers", help="list the live workers from their heartbeats")
    p.add_argument("--json", action="store_true", help="print the raw heartbeats")
    p.set_defaults(func=cmd_workers)
