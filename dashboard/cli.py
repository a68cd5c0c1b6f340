"""`renderfarm dashboard`: the dashboard, the REST API and the SD-WebUI API, served by waitress."""

from __future__ import annotations

import argparse

from shared.config import Settings


def cmd_dashboard(args: argparse.Namespace) -> int:
    from dashboard.app import create_app
    from dashboard.server import serve

    settings = Settings()
    serve(lambda: create_app(settings), args.host, args.port, settings)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="serve the dashboard, REST API and SD-WebUI API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_dashboard)
