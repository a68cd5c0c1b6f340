"""The production HTTP server: waitress, in the `renderfarm dashboard` process.

Why waitress: pure Python and threaded, so one process serves many connections that each
block for a long time (a `/sdapi/v1` generation call, an event stream) with no worker
process to fork or time out; it embeds in our own command with one call (no second
entry point, the app factory runs once with its Redis pools), and it streams a response
as the app writes it. A connection with a request in progress is never closed by it: the
bound on a blocking call is the app's own (`RENDERFARM_SDAPI_WAIT_S`); put any proxy's
read timeout above that.
"""

from __future__ import annotations

import logging

from flask import Flask
from waitress import serve as waitress_serve

from shared.config import Settings


def serve(app: Flask, host: str, port: int, settings: Settings) -> None:
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" noise
    waitress_serve(
        app,
        host=host,
        port=port,
        threads=settings.http_threads,
        connection_limit=settings.http_connection_limit,
        channel_timeout=settings.http_channel_timeout_s,
        backlog=2048,
        ident="renderfarm",
    )
