"""`renderfarm scheduler` (the dispatcher and reaper) and `renderfarm workers` (the fleet)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from shared.config import Settings, redis_client

if TYPE_CHECKING:
    from scheduler.dispatcher import Dispatcher


def cmd_scheduler(args: argparse.Namespace) -> int:
    from scheduler.dispatcher import Dispatcher
    from scheduler.notify import Notifier

    settings = Settings()
    Notifier(redis_client(settings), settings).start()  # webhooks, on its own thread
    dispatcher = Dispatcher(settings)
    if settings.scheduler_metrics_port:
        serve_leader_metric(dispatcher, settings.scheduler_metrics_port)
    dispatcher.run_forever()
    return 0


def serve_leader_metric(dispatcher: Dispatcher, port: int) -> None:
    """This process's own /metrics (prometheus-client's server, on a thread): whether it
    holds the dispatcher lock. Farm-wide figures are the dashboard's /metrics."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import GaugeMetricFamily

    class Leader:
        def collect(self):
            yield GaugeMetricFamily(
                "renderfarm_scheduler_leader",
                "1 while this scheduler holds the dispatcher lock (dispatches and reaps)",
                value=float(dispatcher.leading),
            )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Leader())
    start_http_server(port, registry=registry)


def cmd_workers(args: argparse.Namespace) -> int:
    from scheduler.fleet import draining, live_workers, worker_state

    redis = redis_client(Settings())
    fleet = live_workers(redis)
    if args.json:
        print(json.dumps(fleet, indent=2))
        return 0
    off = draining(redis, [w["name"] for w in fleet])  # the flag itself: at once, not at a beat
    gib = 2**30
    print(
        f"{'worker':<34} {'class':<9} {'state':<8} {'device':<28} {'memory used/total':>18} "
        f"{'cache used/budget':>18} {'models':>6} {'done':>5}  job"
    )
    for w in fleet:
        job = w["current_job"] or "-"
        if w.get("stalled_job"):
            job += " (stalled: given up, running elsewhere)"
        device = f"{w['device']} {w['device_name']}"
        print(
            f"{w['name']:<34} {w['hardware']:<9} {worker_state(w, w['name'] in off):<8} "
            f"{device[:28]:<28} "
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
