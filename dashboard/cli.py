"""`renderfarm dashboard`: the dashboard and REST API."""

from __future__ import annotations

import argparse

from shared.config import Settings


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.app import create_app

    create_app(Settings()).run(host=args.host, port=args.port, threaded=True)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="serve the dashboard and REST API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_dashboard)
