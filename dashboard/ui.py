"""The team dashboard's pages: server-rendered shells, filled in by small scripts that call
the same REST API every program uses (dashboard/static/).

Each page names the role it needs (`require`); the layout leaves out what the account may not
do (the nav's Submit and Admin, action buttons), but the API decides.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from dashboard import farm
from dashboard.accounts import Role
from dashboard.auth import current_account, require, unauthenticated, wants_page
from shared.samplers import SAMPLERS
from shared.vocabulary import Hardware, Priority

ui = Blueprint("ui", __name__)

# (path, page, label, role that sees it in the nav)
NAV = [
    ("/", "queue", "Queue", Role.VIEWER),
    ("/submit", "submit", "Submit", Role.MEMBER),
    ("/gallery", "gallery", "Gallery", Role.VIEWER),
    ("/workers", "workers", "Workers", Role.VIEWER),
    ("/models", "models", "Models", Role.VIEWER),
    ("/admin", "admin", "Admin", Role.ADMIN),
    ("/account", "account", "Account", Role.VIEWER),
]
# Every asset is served from this site: nothing from elsewhere, no inline script, no framing.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _page(template: str, page: str, status: int = 200, **context):
    account = current_account()
    nav = [(path, name, label) for path, name, label, role in NAV if account.role.allows(role)]
    body = render_template(
        template,
        page=page,
        nav=nav,
        account=account,
        Role=Role,
        samplers=list(SAMPLERS),
        hardware=[h.value for h in Hardware],
        priorities=[p.value for p in Priority],
        **context,
    )
    return body, status, HEADERS


@ui.app_errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    """An unknown address or a refused page: to a signed-in browser, a page in the layout
    saying so; to anyone else, JSON like the API's other errors."""
    if not wants_page():
        return jsonify(error=exc.description or exc.name), exc.code
    if current_account() is None:
        return unauthenticated()  # sign in, then see
    if exc.code == 404:
        return _page("missing.html", "", 404, what=f"page {request.path}")
    if exc.code == 403:
        return _page("forbidden.html", "", 403, reason=exc.description)
    return exc


@ui.get("/")
@require(Role.VIEWER)
def queue():
    return _page("queue.html", "queue")


@ui.get("/jobs/<job_id>")
@require(Role.VIEWER)
def job(job_id: str):
    if farm.jobs().records.get(job_id) is None:
        return _page("missing.html", "queue", 404, what=f"job {job_id}")
    return _page("job.html", "queue", job_id=job_id)


@ui.get("/submit")
@require(Role.MEMBER)
def submit():
    return _page("submit.html", "submit")


@ui.get("/gallery")
@require(Role.VIEWER)
def gallery():
    return _page("gallery.html", "gallery")


@ui.get("/workers")
@require(Role.VIEWER)
def workers():
    return _page("workers.html", "workers")


@ui.get("/models")
@require(Role.VIEWER)
def models():
    return _page("models.html", "models")


@ui.get("/admin")
@require(Role.ADMIN)
def admin():
    return _page("admin.html", "admin")


@ui.get("/account")
@require(Role.VIEWER)
def account():
    return _page("account.html", "account")


@ui.get("/favicon.ico")
def favicon():
    """Open to anyone: browsers ask for it on the pages that name no icon (sign in, API docs)."""
    return redirect(url_for("static", filename="favicon.svg"))
