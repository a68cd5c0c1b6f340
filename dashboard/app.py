"""Flask app factory: explicit settings in, blueprints registered, scheduler attached."""

from __future__ import annotations

from flask import Flask, current_app

from scheduler.submit import Scheduler
from shared.config import Settings
from shared.storage import open_storage


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    app.config["RENDERFARM"] = settings
    app.extensions["scheduler"] = Scheduler(settings, storage=open_storage(settings))

    from dashboard.api import api
    from dashboard.ui import ui

    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(ui)
    return app


def scheduler() -> Scheduler:
    return current_app.extensions["scheduler"]
