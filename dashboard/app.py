"""Flask app factory: explicit settings in, the farm attached, sign-in, blueprints registered."""

from __future__ import annotations

import logging
import threading

from botocore.exceptions import BotoCoreError
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from dashboard.accounts import Accounts
from dashboard.accounts_api import accounts_api
from dashboard.api import api
from dashboard.audit import Audit
from dashboard.auth import init_auth
from dashboard.holds import RETRY_AFTER_S, HoldRefused, Holds
from dashboard.live import live
from dashboard.metrics import init_metrics
from dashboard.openapi import init_openapi
from dashboard.sdapi import init_sdapi
from dashboard.ui import ui
from scheduler.control import JobControl
from shared.config import Settings
from shared.storage import open_storage

log = logging.getLogger(__name__)
STORE_RETRY_AFTER_S = 30


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    # A larger body is refused (413) before it is read.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_mb * 2**20
    jobs = JobControl(settings, storage=open_storage(settings))
    accounts = Accounts(jobs.redis, settings)
    audit = Audit(jobs.redis, settings.audit_max_entries)
    # Read through dashboard/farm.py.
    app.extensions["renderfarm.settings"] = settings
    app.extensions["renderfarm.jobs"] = jobs
    app.extensions["renderfarm.accounts"] = accounts
    app.extensions["renderfarm.audit"] = audit
    app.extensions["renderfarm.holds"] = Holds(
        settings.http_threads, settings.http_held_per_account
    )
    app.extensions["renderfarm.stopping"] = threading.Event()
    init_auth(app, accounts, audit, settings)
    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(accounts_api, url_prefix="/api/v1")
    app.register_blueprint(live, url_prefix="/api/v1")
    app.register_blueprint(ui)
    init_metrics(app, jobs.redis)
    init_sdapi(app)
    init_openapi(app)

    @app.after_request
    def _nosniff(resp: Response) -> Response:
        """Every answer is the type it says: an input image is served byte for byte as a
        member sent it, and must never be read as HTML by a browser that sniffs."""
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        limit = f"{settings.max_request_mb} MiB (RENDERFARM_MAX_REQUEST_MB)"
        return jsonify(error=f"request body larger than {limit}"), 413

    @app.errorhandler(HoldRefused)
    def _held_enough(exc: HoldRefused):
        resp = jsonify(error=exc.reason)
        resp.headers["Retry-After"] = str(RETRY_AFTER_S)
        return resp, exc.status

    @app.errorhandler(BotoCoreError)
    def _store_unreachable(exc: BotoCoreError):
        """The S3 endpoint (results or model store) down or not answering: say so, not 500."""
        log.warning("%s %s: object storage unreachable: %s", request.method, request.path, exc)
        resp = jsonify(error=f"object storage unreachable: {exc}; try again shortly")
        resp.headers["Retry-After"] = str(STORE_RETRY_AFTER_S)
        return resp, 503

    @app.get("/healthz")
    def healthz():
        """Open to anyone (load balancers, probes): the process answers and Redis does;
        503 once it is stopping (draining its requests in progress)."""
        if app.extensions["renderfarm.stopping"].is_set():
            return jsonify(ok=False, stopping=True), 503
        try:
            jobs.redis.ping()
        except Exception:
            return jsonify(ok=False, redis=False), 503
        return jsonify(ok=True, redis=True)

    return app
