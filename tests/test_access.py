"""Who may do what, against the real dashboard process: one table of role x route x whose
job, every cell asserted (the status, and that nothing changed where it was refused); then
each kind of credential, revocation, expiry, disabling, CSRF and throttling."""

from __future__ import annotations

import re
import time

import pytest
import requests

from dashboard.accounts import Role
from dashboard.tokens import MAX_PER_ACCOUNT
from shared import keys
from tests.signin import account_token, ensure_account

ROLES = ("anonymous", "viewer", "member", "operator", "admin")
WAITS = {
    "model": "demo-sd15",
    "prompt": "waits for a gpu",
    "width": 64,
    "height": 64,
    "steps": 2,
    "hardware": "gpu",
}  # no gpu worker here: it stays queued
OTHER = "someone-else"

# (what, method, path, the least role that may, whose job it touches, answer when allowed)
MATRIX = [
    ("list jobs", "GET", "/api/v1/jobs", "viewer", None, 200),
    ("read a job", "GET", "/api/v1/jobs/{job}", "viewer", "other", 200),
    ("list models", "GET", "/api/v1/models", "viewer", None, 200),
    ("list workers", "GET", "/api/v1/workers", "viewer", None, 200),
    ("who am I", "GET", "/api/v1/me", "viewer", None, 200),
    ("the dashboard page", "GET", "/", "viewer", None, 200),
    ("submit", "POST", "/api/v1/jobs", "member", None, 202),
    ("submit a batch", "POST", "/api/v1/batches", "member", None, 202),
    ("cancel own job", "POST", "/api/v1/jobs/{job}/cancel", "member", "own", 200),
    ("cancel another's job", "POST", "/api/v1/jobs/{job}/cancel", "operator", "other", 200),
    ("reprioritise own job", "POST", "/api/v1/jobs/{job}/priority", "member", "own", 200),
    ("reprioritise another's", "POST", "/api/v1/jobs/{job}/priority", "operator", "other", 200),
    ("retry own job", "POST", "/api/v1/jobs/{job}/retry", "member", "own-canceled", 200),
    ("retry another's job", "POST", "/api/v1/jobs/{job}/retry", "operator", "other-canceled", 200),
    ("drain a worker", "POST", "/api/v1/workers/{worker}/drain", "operator", None, 200),
    ("scrape the metrics", "GET", "/metrics", "operator", None, 200),
    ("read the fleet's demand", "GET", "/api/v1/fleet/demand", "operator", None, 200),
    ("list own tokens", "GET", "/api/v1/tokens", "member", None, 200),
    ("create an own token", "POST", "/api/v1/tokens", "member", None, 201),
    ("cancel another's batch", "POST", "/api/v1/batches/{batch}/cancel", "operator", "other", 200),
    ("create an account", "POST", "/api/v1/accounts", "admin", None, 201),
    ("list accounts", "GET", "/api/v1/accounts", "admin", None, 200),
    ("read the audit log", "GET", "/api/v1/audit", "admin", None, 200),
    ("health", "GET", "/healthz", "anonymous", None, 200),
]


@pytest.fixture(scope="module")
def sessions(farm):
    """One requests session per role, each with its own account's token."""
    out = {"anonymous": requests.Session()}
    for role in ROLES[1:]:
        out[role] = requests.Session()
        out[role].headers["Authorization"] = (
            f"Bearer {account_token(farm.redis, f'r-{role}', role)}"
        )
    ensure_account(farm.redis, OTHER)
    return out


def json_of(client, method: str, path: str, **kwargs) -> dict:
    resp = client.request(method, path, **kwargs)
    assert resp.ok, resp.text
    return resp.json()


def _job(farm, owner: str, canceled: bool) -> str:
    job = farm.submit(**WAITS, owner=owner)
    if canceled:
        farm.client.cancel(job["id"])
    return job["id"]


def _state(farm, job_id: str | None, role: str) -> tuple:
    """What a refused request must not change: the job, the job list, a drain flag, the
    accounts, the caller's tokens."""
    job = farm.job(job_id) if job_id else {}
    return (
        job.get("status"),
        job.get("priority"),
        farm.redis.zcard(keys.jobs_index()),
        farm.redis.exists(keys.drain(farm.cpu_worker())),
        farm.redis.scard(keys.accounts_index()),
        farm.redis.scard(keys.account_tokens(f"r-{role}")),
    )


def _body(path: str, role: str) -> dict | None:
    if "priority" in path:
        return {"priority": "high"}
    return {
        "/api/v1/jobs": WAITS,
        "/api/v1/batches": {"jobs": [WAITS]},
        "/api/v1/tokens": {"label": "matrix"},
        "/api/v1/accounts": {"name": f"made-by-{role}-{time.time_ns()}", "role": "viewer"},
    }.get(path)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("what", "method", "path", "least", "whose", "allowed"), MATRIX, ids=[row[0] for row in MATRIX]
)
def test_permission_matrix(farm, sessions, role, what, method, path, least, whose, allowed):
    job_id = batch_id = None
    if "{batch}" in path:
        batch = farm.client.submit_batch([WAITS], owner=OTHER)
        batch_id, job_id = batch["id"], batch["jobs"][0]["id"]
    elif whose:
        own = whose.startswith("own") and role in ("member", "operator", "admin")
        job_id = _job(farm, f"r-{role}" if own else OTHER, canceled=whose.endswith("canceled"))
    before = _state(farm, job_id, role)
    url = farm.url + path.format(job=job_id, worker=farm.cpu_worker(), batch=batch_id)
    resp = sessions[role].request(
        method,
        url,
        json=_body(path, role),
        timeout=10,
        allow_redirects=False,
        headers={"Accept": "application/json"},
    )
    if ROLES.index(role) >= ROLES.index(least):
        assert resp.status_code == allowed, resp.text
    else:
        expected = 401 if role == "anonymous" else 403
        assert resp.status_code == expected, resp.text
        if expected == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Basic")
        else:
            assert "needs role" in resp.text or "is someone-else's" in resp.text
        assert _state(farm, job_id, role) == before, "a refused request changed something"
    # Leave nothing queued or drained behind.
    farm.redis.delete(keys.drain(farm.cpu_worker()))
    made = resp.json() if resp.status_code == 202 else {}
    for job in [job_id, made.get("id"), *(j["id"] for j in made.get("jobs", []))]:
        if job:
            farm.client.request("POST", f"/api/v1/jobs/{job}/cancel")


def test_the_owner_is_the_caller_unless_an_operator_submits_for_someone(farm):
    member = farm.as_account("mo-member")
    refused = member.request("POST", "/api/v1/jobs", json={**WAITS, "owner": OTHER})
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "owner"
    mine = member.submit(WAITS)
    assert mine["owner"] == "mo-member" and mine["submitted_by"] == "mo-member"
    operator = farm.as_account("mo-operator", "operator")
    theirs = operator.submit(WAITS, owner="mo-member")
    assert (theirs["owner"], theirs["submitted_by"]) == ("mo-member", "mo-operator")
    nobody = operator.request("POST", "/api/v1/jobs", json={**WAITS, "owner": "no-such-one"})
    assert nobody.status_code == 422 and "no active account" in nobody.text
    for job in (mine, theirs):
        member.cancel(job["id"])  # a member steers its own jobs, whoever submitted them
    audit = farm.client.request("GET", "/api/v1/audit", params={"target": theirs["id"]}).json()
    assert [e["actor"] for e in audit["entries"]] == ["mo-member", "mo-operator"]
    assert [e["action"] for e in audit["entries"]] == ["job.cancel", "job.submit"]
    assert audit["entries"][1]["detail"] == "owner mo-member"  # submitted on its behalf


def test_basic_with_password_and_with_token(farm):
    ensure_account(farm.redis, "basic-user").set_password("basic-user", "a long password")
    me = requests.get(f"{farm.url}/api/v1/me", auth=("basic-user", "a long password"), timeout=10)
    assert me.status_code == 200 and me.json()["name"] == "basic-user"
    token = account_token(farm.redis, "basic-user")
    assert requests.get(f"{farm.url}/api/v1/me", auth=("basic-user", token), timeout=10).ok
    wrong_name = requests.get(f"{farm.url}/api/v1/me", auth=("someone", token), timeout=10)
    assert wrong_name.status_code == 401


def test_a_full_set_of_tokens_is_a_409_saying_to_revoke_one(farm):
    client = farm.as_account("collector")  # it holds one token: its client's
    accounts = ensure_account(farm.redis, "collector")
    for _ in range(MAX_PER_ACCOUNT - len(accounts.tokens.list("collector"))):
        accounts.create_token("collector")
    full = client.request("POST", "/api/v1/tokens", json={"label": "one more"})
    assert full.status_code == 409, full.text
    assert full.json()["error"] == (
        f"collector has {MAX_PER_ACCOUNT} tokens, the most an account may hold: revoke one first"
    )
    assert len(accounts.tokens.list("collector")) == MAX_PER_ACCOUNT


def test_a_revoked_token_stops_on_the_next_request_and_an_expired_one_too(farm):
    client = farm.as_account("revoker")
    made = json_of(client, "POST", "/api/v1/tokens", json={"label": "ci", "expires_days": 30})
    assert made["token"].startswith("rf_") and made["label"] == "ci"
    listed = json_of(client, "GET", "/api/v1/tokens")["tokens"]
    assert made["id"] in [t["id"] for t in listed]
    assert all("token" not in t and "hash" not in t for t in listed)  # shown once, never again
    second = requests.Session()
    second.headers["Authorization"] = f"Bearer {made['token']}"
    assert second.get(f"{farm.url}/api/v1/me", timeout=10).ok
    assert client.request("DELETE", f"/api/v1/tokens/{made['id']}").ok
    assert second.get(f"{farm.url}/api/v1/me", timeout=10).status_code == 401

    too_long = client.request("POST", "/api/v1/tokens", json={"label": "x" * 201})
    assert too_long.status_code == 422 and too_long.json()["errors"][0]["field"] == "label"
    assert "at most 200 printable characters" in too_long.json()["errors"][0]["reason"]

    accounts = ensure_account(farm.redis, "revoker")
    _, soon = accounts.create_token("revoker", "short", expires_at=time.time() + 1)
    assert requests.get(
        f"{farm.url}/api/v1/me", headers={"Authorization": f"Bearer {soon}"}, timeout=10
    ).ok
    time.sleep(1.5)
    late = requests.get(
        f"{farm.url}/api/v1/me", headers={"Authorization": f"Bearer {soon}"}, timeout=10
    )
    assert late.status_code == 401


def test_disabling_an_account_cancels_its_jobs_and_ends_its_tokens(farm):
    leaver = farm.as_account("leaver")
    queued = [leaver.submit(WAITS)["id"] for _ in range(2)]
    answer = json_of(farm.client, "POST", "/api/v1/accounts/leaver", json={"disabled": True})
    assert answer["disabled"] is True
    assert {farm.job(j)["status"] for j in queued} == {"canceled"}
    assert leaver.request("GET", "/api/v1/me").status_code == 401
    assert json_of(farm.client, "POST", "/api/v1/accounts/leaver", json={"disabled": False})


def test_a_cookie_session_needs_the_csrf_token_and_a_token_request_does_not(farm):
    ensure_account(farm.redis, "cookie-user").set_password("cookie-user", "a long password")
    browser = requests.Session()
    form = browser.get(f"{farm.url}/login", timeout=10).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    signed = browser.post(
        f"{farm.url}/login",
        timeout=10,
        allow_redirects=False,
        data={"name": "cookie-user", "password": "a long password", "csrf_token": csrf},
    )
    assert signed.status_code == 302
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    before = farm.redis.zcard(keys.jobs_index())
    forged = browser.post(f"{farm.url}/api/v1/jobs", json=WAITS, timeout=10)
    assert forged.status_code == 400 and "CSRF" in forged.text
    assert farm.redis.zcard(keys.jobs_index()) == before, "a forged request queued a job"
    page = browser.get(f"{farm.url}/", timeout=10).text
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    ok = browser.post(
        f"{farm.url}/api/v1/jobs", json=WAITS, timeout=10, headers={"X-CSRFToken": token}
    )
    assert ok.status_code == 202, ok.text
    farm.client.cancel(ok.json()["id"])
    # A program's token carries no ambient credential: no CSRF token needed.
    assert farm.client.request("POST", f"/api/v1/jobs/{ok.json()['id']}/retry").ok
    farm.client.cancel(ok.json()["id"])


def test_failed_password_checks_are_throttled_with_retry_after(farm):
    ensure_account(farm.redis, "guessed", Role.MEMBER).set_password("guessed", "the right one!")
    codes = [
        requests.get(f"{farm.url}/api/v1/me", auth=("guessed", f"wrong {i}"), timeout=10)
        for i in range(6)
    ]
    assert [r.status_code for r in codes[:5]] == [401] * 5
    assert codes[5].status_code == 429 and int(codes[5].headers["Retry-After"]) > 0
    # Throttled means even the right password waits; a token is not a password check.
    right = requests.get(f"{farm.url}/api/v1/me", auth=("guessed", "the right one!"), timeout=10)
    assert right.status_code == 429
    token = account_token(farm.redis, "guessed")
    assert requests.get(f"{farm.url}/api/v1/me", auth=("guessed", token), timeout=10).ok
