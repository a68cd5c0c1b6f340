"""An SD-WebUI (AUTOMATIC1111) compatible API at `/sdapi/v1`, onto the farm's own specs and queue.

`errors` (SD-WebUI's error shapes), `catalogue` (models, samplers and upscalers as SD-WebUI
lists them), `mapping` (a request → a job spec), `replies` (a finished job → SD-WebUI's
answer, infotext), `state` (per-caller options and progress), `routes` (the blueprint).
"""

from __future__ import annotations

from flask import Flask

from dashboard.sdapi.errors import init_errors
from dashboard.sdapi.routes import sdapi

PREFIX = "/sdapi/v1"


def init_sdapi(app: Flask) -> None:
    """At the server root: SillyTavern overwrites the URL's path with /sdapi/v1/..."""
    app.register_blueprint(sdapi, url_prefix=PREFIX)
    init_errors(app, PREFIX)
