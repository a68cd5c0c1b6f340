"""What a request handler reaches the farm through (a leaf: views import it, it imports no view).

`create_app` attaches the farm's job control, settings, accounts and audit log to the app;
handlers read them here, as Flask's tutorial reads its database with `get_db`.
"""

from __future__ import annotations

import threading

from flask import Flask, current_app

from dashboard.accounts import Accounts
from dashboard.audit import Audit
from dashboard.holds import Holds
from scheduler.control import JobControl
from shared.config import Settings
from shared.modelstore import ModelStore


def jobs() -> JobControl:
    return current_app.extensions["renderfarm.jobs"]


def models() -> ModelStore:
    """The model store, opened once per process (job control checks submissions with it)."""
    return jobs().models


def settings() -> Settings:
    return current_app.extensions["renderfarm.settings"]


def accounts() -> Accounts:
    return current_app.extensions["renderfarm.accounts"]


def audit() -> Audit:
    return current_app.extensions["renderfarm.audit"]


def holds() -> Holds:
    """This process's count of long requests (event streams, blocking SD-WebUI calls)."""
    return current_app.extensions["renderfarm.holds"]


def stopping(app: Flask | None = None) -> threading.Event:
    """Set when the server stops (dashboard/server.py): event streams end, /healthz says 503."""
    return (app or current_app).extensions["renderfarm.stopping"]
