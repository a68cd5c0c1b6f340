"""Sign-in through a small Flask app built with init_auth: Flask's test client, real Redis."""

from __future__ import annotations

import base64
import re
import time

import pytest
from argon2 import PasswordHasher
from flask import Flask, jsonify
from flask_wtf.csrf import generate_csrf
from redis import Redis

from dashboard.accounts import Accounts, Role
from dashboard.audit import Audit
from dashboard.auth import current_account, current_token_id, init_auth, require
from shared import keys
from shared.config import Settings

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"


@pytest.fixture
def db_url(redis_url) -> str:
    url = redis_url.rsplit("/", 1)[0] + "/9"
    Redis.from_url(url).flushdb()
    return url


def make_app(db_url: str, **overrides) -> tuple[Flask, Accounts, Audit]:
    settings = Settings(redis_url=db_url, **overrides)
    redis = Redis.from_url(db_url)
    accounts, audit = Accounts(redis, settings, hasher=FAST), Audit(redis, 1000)
    app = Flask(__name__)
    init_auth(app, accounts, audit, settings)

    @app.get("/")
    @require(Role.VIEWER)
    def page():
        return "the team page"

    @app.get("/api/whoami")
    @require(Role.VIEWER)
    def whoami():
        return jsonify(name=current_account().name, token_id=current_token_id())

    @app.get("/api/csrf")
    @require(Role.VIEWER)
    def csrf():
        return jsonify(token=generate_csrf())

    @app.post("/api/jobs")
    @require(Role.MEMBER)
    def submit():
        return jsonify(submitted_by=current_account().name)

    @app.post("/api/workers/w1/drain")
    @require(Role.OPERATOR)
    def drain():
        return jsonify(drained=True)

    return app, accounts, audit


@pytest.fixture
def farm(db_url):
    app, accounts, audit = make_app(
        db_url, password_attempts_per_address="6/minute", password_attempts_per_name="3/minute"
    )
    accounts.create("alice", "member", PASSWORD)
    return app, accounts, audit


def basic(name: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def form_token(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, name: str = "alice", password: str = PASSWORD):
    token = form_token(client.get("/login").text)
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token})


def test_no_credentials_is_401_with_a_basic_challenge_or_the_login_page(farm):
    app, _, _ = farm
    client = app.test_client()
    resp = client.get("/api/whoami")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="renderfarm"'
    assert "authentication required" in resp.json["error"]
    assert client.post("/api/jobs", json={}).status_code == 401

    page = client.get("/?x=1", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.status_code == 302 and page.headers["Location"] == "/login?next=/?x%3D1"
    assert client.get("/", headers={"Accept": "*/*"}).status_code == 401


def test_bearer_tokens_work_and_bad_ones_do_not(farm):
    app, accounts, _ = farm
    token, secret = accounts.create_token("alice", label="script")
    client = app.test_client()
    resp = client.get("/api/whoami", headers=bearer(secret))
    assert resp.status_code == 200 and resp.json == {"name": "alice", "token_id": token.id}
    bad = client.get("/api/whoami", headers=bearer("rf_" + "x" * 43))
    assert bad.status_code == 401 and "invalid" in bad.json["error"]
    accounts.tokens.revoke("alice", token.id)
    assert client.get("/api/whoami", headers=bearer(secret)).status_code == 401


def test_basic_with_a_password_or_a_token_works(farm):
    app, accounts, _ = farm
    token, secret = accounts.create_token("alice")
    client = app.test_client()
    resp = client.get("/api/whoami", headers=basic("alice", PASSWORD))
    assert resp.status_code == 200 and resp.json == {"name": "alice", "token_id": None}
    resp = client.get("/api/whoami", headers=basic("alice", secret))
    assert resp.status_code == 200 and resp.json["token_id"] == token.id
    accounts.create("bob", "admin", "bobs password")
    assert client.get("/api/whoami", headers=basic("bob", secret)).status_code == 401
    assert client.get("/api/whoami", headers=basic("alice", "wrong password")).status_code == 401
    # Neither answer set a session cookie.
    assert client.get_cookie("session") is None


def test_a_role_too_low_is_403_with_the_reason(farm):
    app, accounts, _ = farm
    accounts.create("vera", "viewer", "veras password")
    accounts.create("olga", "operator", "olgas password")
    client = app.test_client()
    resp = client.post("/api/workers/w1/drain", headers=basic("alice", PASSWORD))
    assert resp.status_code == 403
    assert resp.json == {"error": "needs role operator; you are member"}
    resp = client.post("/api/jobs", headers=basic("vera", "veras password"))
    assert resp.status_code == 403 and resp.json["error"] == "needs role member; you are viewer"
    assert client.post("/api/jobs", headers=basic("olga", "olgas password")).status_code == 200
    ok = client.post("/api/workers/w1/drain", headers=basic("olga", "olgas password"))
    assert ok.status_code == 200


def test_the_login_page_sets_an_httponly_samesite_lax_cookie(farm):
    app, accounts, audit = farm
    client = app.test_client()
    page = client.get("/login")
    assert (
        page.status_code == 200
        and "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    )
    assert "<script" not in page.text and "http" not in page.text.split("<body>")[1]

    resp = sign_in(client)
    assert resp.status_code == 302 and resp.headers["Location"] == "/"
    [cookie] = [c for c in resp.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert client.get("/api/whoami").json == {"name": "alice", "token_id": None}
    assert accounts.get("alice").last_login is not None
    assert audit.recent(1)[0]["action"] == "login"


def test_behind_https_the_cookie_is_secure(db_url):
    app, accounts, _ = make_app(db_url, secure_cookies=True)
    accounts.create("alice", "member", PASSWORD)
    resp = sign_in(app.test_client())
    [cookie] = [c for c in resp.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert "Secure" in cookie


def test_a_failed_login_never_says_whether_the_name_exists(farm):
    app, accounts, audit = farm
    client = app.test_client()
    wrong = sign_in(client, "alice", "not the password")
    unknown = sign_in(client, "nobody", "not the password")
    assert wrong.status_code == unknown.status_code == 200
    assert "Wrong name or password." in wrong.text
    # The same page but for the name typed, which the form keeps (never the password).
    assert 'value="alice"' in wrong.text and 'value="nobody"' in unknown.text
    assert wrong.text.replace('value="alice"', 'value="nobody"') == unknown.text
    assert "not the password" not in wrong.text
    assert client.get("/api/whoami").status_code == 401
    failed = audit.recent(2, action="login.failed")
    assert [e["target"] for e in failed] == ["", "alice"]  # an unknown name is not logged
    # Without the form's CSRF token nothing is checked.
    resp = client.post("/login", data={"name": "alice", "password": PASSWORD})
    assert resp.status_code == 400 and "expired" in resp.text


def test_csrf_is_required_with_the_cookie_but_not_with_bearer_or_basic(farm):
    app, accounts, _ = farm
    _, secret = accounts.create_token("alice")
    client = app.test_client()
    sign_in(client)
    refused = client.post("/api/jobs", json={})
    assert refused.status_code == 400 and "CSRF" in refused.json["error"]
    token = client.get("/api/csrf").json["token"]
    ok = client.post("/api/jobs", json={}, headers={"X-CSRFToken": token})
    assert ok.status_code == 200 and ok.json == {"submitted_by": "alice"}

    program = app.test_client()  # no cookie
    assert program.post("/api/jobs", json={}, headers=bearer(secret)).status_code == 200
    assert program.post("/api/jobs", json={}, headers=basic("alice", PASSWORD)).status_code == 200
    # Basic credentials a browser cached and sends to a cross-site request are ambient too.
    cross = {**basic("alice", PASSWORD), "Sec-Fetch-Site": "cross-site"}
    assert program.post("/api/jobs", json={}, headers=cross).status_code == 400


def test_failed_password_checks_are_throttled_with_retry_after(farm):
    app, accounts, _ = farm
    _, secret = accounts.create_token("alice")
    client = app.test_client()
    for _ in range(3):  # the per-name budget
        assert client.get("/api/whoami", headers=basic("alice", "wrong!")).status_code == 401
    for attempt in ("wrong!", PASSWORD):  # right or wrong, no check until the window moves
        resp = client.get("/api/whoami", headers=basic("alice", attempt))
        assert resp.status_code == 429
        assert 0 < int(resp.headers["Retry-After"]) <= 60
        assert "too many failed password attempts" in resp.json["error"]
    page = sign_in(client, "alice", PASSWORD)
    assert page.status_code == 429 and int(page.headers["Retry-After"]) > 0
    assert "Too many failed attempts" in page.text
    # Tokens are not throttled, and other names from other addresses are not affected.
    assert client.get("/api/whoami", headers=bearer(secret)).status_code == 200
    assert client.get("/api/whoami", headers=basic("alice", secret)).status_code == 200
    accounts.create("bob", "member", "bobs password")
    resp = client.get(
        "/api/whoami",
        headers=basic("bob", "bobs password"),
        environ_base={"REMOTE_ADDR": "10.1.1.1"},
    )
    assert resp.status_code == 200


def test_failed_checks_are_throttled_per_address(farm):
    app, _, _ = farm
    client = app.test_client()
    here = {"REMOTE_ADDR": "10.2.2.2"}
    for i in range(6):  # the per-address budget, spread over names
        resp = client.get("/api/whoami", headers=basic(f"user{i}", "x"), environ_base=here)
        assert resp.status_code == 401
    resp = client.get("/api/whoami", headers=basic("alice", PASSWORD), environ_base=here)
    assert resp.status_code == 429 and "Retry-After" in resp.headers
    elsewhere = client.get(
        "/api/whoami", headers=basic("alice", PASSWORD), environ_base={"REMOTE_ADDR": "10.3.3.3"}
    )
    assert elsewhere.status_code == 200


def test_logout_ends_the_session_and_a_copy_of_its_cookie(farm):
    app, _, audit = farm
    client = app.test_client()
    sign_in(client)
    cookie = client.get_cookie("session").value
    token = client.get("/api/csrf").json["token"]
    resp = client.post("/logout", headers={"X-CSRFToken": token})
    assert resp.status_code == 200 and resp.json == {"signed_out": True}
    assert audit.recent(1)[0]["action"] == "logout"
    assert client.get("/api/whoami").status_code == 401
    replay = app.test_client()
    replay.set_cookie("session", cookie)
    assert replay.get("/api/whoami").status_code == 401


def test_a_disabled_accounts_cookie_and_tokens_are_refused(farm):
    app, accounts, _ = farm
    _, secret = accounts.create_token("alice")
    client = app.test_client()
    sign_in(client)
    assert client.get("/api/whoami").status_code == 200
    accounts.disable("alice")
    assert client.get("/api/whoami").status_code == 401
    assert app.test_client().get("/api/whoami", headers=bearer(secret)).status_code == 401
    accounts.enable("alice")
    assert client.get("/api/whoami").status_code == 401  # the old cookie stays ended


def test_an_idle_session_expires(db_url):
    app, accounts, _ = make_app(db_url, session_idle_s=1)
    accounts.create("alice", "member", PASSWORD)
    client = app.test_client()
    sign_in(client)
    assert client.get("/api/whoami").status_code == 200
    time.sleep(2.5)
    assert client.get("/api/whoami").status_code == 401


def test_the_secret_key_is_generated_once_and_shared_unless_set(db_url):
    first, _, _ = make_app(db_url)
    second, _, _ = make_app(db_url)
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert Redis.from_url(db_url).get(keys.secret_key()).decode() == first.config["SECRET_KEY"]
    configured, _, _ = make_app(db_url, secret_key="from the environment")
    assert configured.config["SECRET_KEY"] == "from the environment"
