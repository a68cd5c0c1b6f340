"""The team page: recent jobs with status and thumbnails, and a form to submit a prompt."""

from __future__ import annotations

from flask import Blueprint, render_template

from dashboard.accounts import Role
from dashboard.auth import current_account, require
from shared.samplers import SAMPLERS

ui = Blueprint("ui", __name__)


@ui.get("/")
@require(Role.VIEWER)
def index():
    # The page mirrors the account's role (what it may press); the API decides.
    return render_template(
        "index.html", samplers=list(SAMPLERS), account=current_account(), Role=Role
    )
