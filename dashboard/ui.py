"""The team page: recent jobs with status and thumbnails, and a form to submit a prompt."""

from __future__ import annotations

from flask import Blueprint, render_template

from shared.samplers import SAMPLERS

ui = Blueprint("ui", __name__)


@ui.get("/")
def index():
    return render_template("index.html", samplers=list(SAMPLERS))
