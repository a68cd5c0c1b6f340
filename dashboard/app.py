"""Flask app factory: explicit settings in, the farm attached, blueprints registered."""

from __future__ import annotations

from flask import Flask

from dashboard.api import api
from dashboard.ui import ui
from scheduler.control import JobControl
from shared.config import Settings
from shared.storage import open_storage


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    # Read through dashboard/farm.py.
    app.extensions["renderfarm.settings"] = settings
    app.extensions["renderfarm.jobs"] = JobControl(settings, storage=open_storage(settings))
    app.register_blueprint(api, url_prefix="/api/v1")
    app.register_blueprint(ui)
    return app
