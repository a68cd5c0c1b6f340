"""Sign-in for the dashboard and the API, on Flask-Login, Flask-WTF and `limits`.

A request is from an account by one of:
- a session cookie, set by the login page (`/login`); its user id carries the account's
  session epoch, so a disabled account or a new password ends it on the next request;
- `Authorization: Bearer <token>`;
- HTTP Basic `name:password` or `name:token` (what SD-WebUI clients send).

CSRF tokens are checked on state-changing requests that a browser authenticates by itself
(the session cookie), not on Bearer or Basic ones, which a program adds explicitly.
Views are guarded with `require(Role.X)`.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import wraps
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Request,
    abort,
    current_app,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from redis import Redis

from dashboard.accounts import Account, Accounts, Role
from dashboard.audit import Audit, entry
from dashboard.throttle import PasswordThrottle, Throttled
from dashboard.tokens import looks_like_token
from shared import keys
from shared.config import Settings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CHALLENGE = {"WWW-Authenticate": 'Basic realm="renderfarm"'}
# The login page loads nothing from elsewhere and may not be framed (clickjacking).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

login = Blueprint("login", __name__, template_folder="templates")


class Principal(UserMixin):
    """Flask-Login's user: an account, how this request proved it ("session", "bearer",
    "basic") and the token it used, if any."""

    def __init__(self, account: Account, via: str, token_id: str | None = None):
        self.account = account
        self.via = via
        self.token_id = token_id

    def get_id(self) -> str:
        return self.account.session_id


@dataclass(frozen=True)
class _Auth:
    accounts: Accounts
    audit: Audit
    throttle: PasswordThrottle
    csrf: CSRFProtect


def init_auth(app: Flask, accounts: Accounts, audit: Audit, settings: Settings) -> None:
    """Sign-in, CSRF protection and password throttling for `app`, and the login pages."""
    app.config.update(
        SECRET_KEY=_secret_key(accounts.redis, settings),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        # Idle expiry: the cookie is re-signed on every request, and one whose signature is
        # older than this is refused by Flask.
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=settings.session_idle_s),
        SESSION_REFRESH_EACH_REQUEST=True,
        WTF_CSRF_CHECK_DEFAULT=False,  # decided per request in _csrf_for_ambient_credentials
        WTF_CSRF_TIME_LIMIT=None,  # valid as long as the session
    )
    manager = LoginManager(app)
    manager.user_loader(_load_from_session)
    manager.request_loader(_load_from_header)
    manager.unauthorized_handler(unauthenticated)
    throttle = PasswordThrottle(
        accounts.redis, settings.password_attempts_per_address, settings.password_attempts_per_name
    )
    app.extensions["renderfarm.auth"] = _Auth(accounts, audit, throttle, CSRFProtect(app))
    app.before_request(_csrf_for_ambient_credentials)
    app.register_error_handler(CSRFError, lambda exc: (jsonify(error=exc.description), 400))
    app.register_blueprint(login)


def require(role: Role) -> Callable:
    """Decorate a view: only accounts of `role` or above get in.

    No or bad credentials: 401 JSON with a Basic challenge (a browser asking for a page is
    sent to /login instead); too low a role: 403 JSON saying which role is needed (to a
    browser asking for a page, Forbidden with that reason: the dashboard's page says it).
    """

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def guarded(*args, **kwargs):
            account = current_account()
            if account is None:
                return unauthenticated()
            if not account.role.allows(role):
                reason = f"needs role {role}; you are {account.role}"
                if wants_page():
                    abort(403, reason)
                return jsonify(error=reason), 403
            return view(*args, **kwargs)

        return guarded

    return decorate


def current_account() -> Account | None:
    return current_user.account if current_user.is_authenticated else None


def current_token_id() -> str | None:
    """The id of the token this request was made with (for the audit log), if any."""
    return current_user.token_id if current_user.is_authenticated else None


def audit_entry(action: str, target: str = "", detail: str = "") -> dict[str, str]:
    """The audit log entry of an action of this request's account, for the step that makes
    the change to write with it (a job's submission)."""
    account = current_account()
    return entry(
        account.name if account else "anonymous",
        action,
        target,
        source=request.remote_addr or "",
        token_id=current_token_id(),
        detail=detail,
    )


def audit_event(action: str, target: str = "", detail: str = "") -> None:
    """Record an action of this request's account in the audit log."""
    _state().audit.append(audit_entry(action, target, detail))


# -- the login pages ----------------------------------------------------------------------


@login.route("/login", methods=["GET", "POST"])
def login_page():
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_account() is not None:  # already signed in: on to where it was going
            return redirect(next_url or "/")
        return _page(next_url)
    try:
        _state().csrf.protect()
    except CSRFError:
        return _page(next_url, "The form expired. Please sign in again.", 400)
    name = request.form.get("name", "").strip()
    try:
        account = _check_password(name, request.form.get("password", ""), "login page")
    except Throttled as exc:
        headers = {"Retry-After": str(exc.retry_after)}
        message = f"Too many failed attempts. Try again in {exc.retry_after} s."
        return _page(next_url, message, 429, headers)
    if account is None:
        # The same answer whether or not the name exists.
        return _page(next_url, "Wrong name or password.", 200)
    session.clear()  # nothing from before the login survives it
    login_user(Principal(account, "session"))
    session.permanent = True
    _state().accounts.record_login(account.name)
    audit_event("login")
    return redirect(next_url or "/")


@login.post("/logout")
def logout():
    """End the session; its account's other browser sessions end too (epoch bump), so a
    copy of the cookie is worthless afterwards."""
    account = current_account()
    if account is not None and current_user.via == "session":
        audit_event("logout")
        _state().accounts.end_sessions(account.name)
    logout_user()
    session.clear()
    if _wants_html():
        return redirect(url_for("login.login_page"))
    return jsonify(signed_out=True)


def _page(next_url: str | None, error: str | None = None, status: int = 200, headers=None):
    body = render_template("login.html", error=error, next_url=next_url)
    return body, status, {**PAGE_HEADERS, **(headers or {})}


def _safe_next(value: str | None) -> str | None:
    """Only a path on this site (no open redirect to another one)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return None
    parts = urlsplit(value)
    return None if parts.scheme or parts.netloc else value


# -- how a request is authenticated -------------------------------------------------------


def _state() -> _Auth:
    return current_app.extensions["renderfarm.auth"]


def _load_from_session(user_id: str) -> Principal | None:
    account = _state().accounts.account_for_session(user_id)
    return Principal(account, "session") if account else None


def _load_from_header(req: Request) -> Principal | None:
    scheme, _, credentials = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return _token_principal(credentials.strip(), "bearer")
    basic = req.authorization
    if basic is None or basic.type != "basic":
        return None
    name, secret = basic.username or "", basic.password or ""
    if looks_like_token(secret):
        principal = _token_principal(secret, "basic")
        if principal is None or not hmac.compare_digest(principal.account.name, name):
            return None
        return principal
    try:
        account = _check_password(name, secret, "basic")
    except Throttled as exc:
        abort(make_response(jsonify(error=str(exc)), 429, {"Retry-After": str(exc.retry_after)}))
    return Principal(account, "basic") if account else None


def _token_principal(secret: str, via: str) -> Principal | None:
    found = _state().accounts.check_token(secret)
    return Principal(found[0], via, found[1].id) if found else None


def _check_password(name: str, password: str, via: str) -> Account | None:
    """A throttled password check; failures are counted and audited."""
    state, address = _state(), request.remote_addr
    state.throttle.check(address, name)
    account = state.accounts.check_password(name, password)
    if account is None:
        state.throttle.failed(address, name)
        # The target only when such an account exists: a password typed into the name
        # field must not end up in the log.
        known = state.accounts.get(name) is not None
        state.audit.record(
            "anonymous", "login.failed", name if known else "", source=address or "", detail=via
        )
    return account


def _csrf_for_ambient_credentials() -> None:
    if request.method in SAFE_METHODS or request.endpoint == "login.login_page":
        return  # the login form checks its own token
    if not current_user.is_authenticated:
        return
    # Basic credentials a browser has cached are sent by it unasked, like a cookie; such a
    # request from another site carries the browser's Sec-Fetch-Site (programs send none).
    ambient_basic = current_user.via == "basic" and request.headers.get("Sec-Fetch-Site") in (
        "cross-site",
        "same-site",
    )
    if current_user.via == "session" or ambient_basic:
        _state().csrf.protect()


def _wants_html() -> bool:
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def wants_page() -> bool:
    """A browser asking for one of the dashboard's pages (not an API address)."""
    api = request.path.startswith(("/api/", "/sdapi/", "/metrics"))
    return request.method == "GET" and not api and _wants_html()


def unauthenticated():
    """The answer to a request with no account: a browser's page request goes to /login,
    anything else is 401 with a Basic challenge."""
    if request.method == "GET" and _wants_html() and "Authorization" not in request.headers:
        return redirect(url_for("login.login_page", next=request.full_path.rstrip("?")))
    if "Authorization" in request.headers:
        error = "invalid, expired or revoked credentials"
    else:
        error = "authentication required: sign in, or send Authorization: Bearer <token>"
    return jsonify(error=error), 401, CHALLENGE


def _secret_key(redis: Redis, settings: Settings) -> str:
    """The setting, else one generated once and kept in Redis for every replica."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value()
    redis.set(keys.secret_key(), secrets.token_hex(32), nx=True)
    return redis.get(keys.secret_key()).decode()
