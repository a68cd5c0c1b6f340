"""Accounts, tokens, quotas and the audit log against a real Redis (its own db, flushed)."""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from redis import Redis

from dashboard.accounts import Accounts, LastAdmin, Role, UnknownAccount
from dashboard.accounts_cli import ensure_local_admin
from dashboard.app import create_app
from dashboard.audit import Audit
from dashboard.tokens import MARK_USE_S, MAX_LABEL, MAX_PER_ACCOUNT, TooManyTokens, digest
from renderfarm import localfarm
from scheduler.quotas import Quota
from shared import keys
from shared.config import Settings
from tests.conftest import settings_on_db

# Cheap argon2 parameters: the tests check behaviour, not cost.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"


@pytest.fixture
def redis(redis_url) -> Redis:
    client = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    return client


@pytest.fixture
def accounts(redis) -> Accounts:
    return Accounts(redis, Settings(), hasher=FAST)


def stored_values(redis: Redis) -> bytes:
    """Everything this db holds, keys and values, as one blob."""
    blob = []
    for key in redis.scan_iter():
        kind = redis.type(key)
        if kind == b"hash":
            blob += [k + v for k, v in redis.hgetall(key).items()]
        elif kind == b"set":
            blob += list(redis.smembers(key))
        elif kind == b"string":
            blob.append(redis.get(key))
        elif kind == b"stream":
            blob += [repr(e).encode() for e in redis.xrange(key)]
        blob.append(key)
    return b"\n".join(blob)


def test_password_is_stored_as_an_argon2id_hash_only(accounts, redis):
    alice = accounts.create("alice", "member", PASSWORD)
    assert alice.role is Role.MEMBER and not alice.service and not alice.disabled
    assert redis.hget(keys.account("alice"), "password_hash").startswith(b"$argon2id$")
    assert PASSWORD.encode() not in stored_values(redis)
    assert "password" not in str(alice.as_dict()) and alice.as_dict()["role"] == "member"
    assert accounts.check_password("alice", PASSWORD) == alice
    assert accounts.check_password("alice", PASSWORD + "x") is None
    assert accounts.check_password("nobody", PASSWORD) is None
    assert accounts.check_password("Not A Name!", PASSWORD) is None
    with pytest.raises(ValueError, match="exists"):
        accounts.create("alice", "viewer")


def test_a_login_rehashes_when_the_hash_parameters_change(accounts, redis):
    accounts.create("alice", "member", PASSWORD)
    old = redis.hget(keys.account("alice"), "password_hash")
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    assert stronger.check_needs_rehash(old.decode())
    upgraded = Accounts(redis, Settings(), hasher=stronger)
    assert upgraded.check_password("alice", PASSWORD) is not None
    new = redis.hget(keys.account("alice"), "password_hash").decode()
    assert new != old.decode() and not stronger.check_needs_rehash(new)
    assert upgraded.check_password("alice", PASSWORD) is not None
    assert upgraded.check_password("alice", "wrong password") is None


def test_a_service_account_cannot_sign_in_with_a_password(accounts):
    bot = accounts.create("ci-bot", Role.MEMBER)
    assert bot.service
    for attempt in ("", "anything at all", PASSWORD):
        assert accounts.check_password("ci-bot", attempt) is None
    _, secret = accounts.create_token("ci-bot")
    assert accounts.check_token(secret)[0].name == "ci-bot"


def test_names_roles_and_passwords_are_validated_with_clear_messages(accounts):
    for bad in ("", "Alice", "-x", "a b", "a:b", "x" * 65):
        with pytest.raises(ValueError, match="invalid account name"):
            accounts.create(bad, "member")
    with pytest.raises(ValueError, match="unknown role 'root': one of viewer, member"):
        accounts.create("alice", "root")
    with pytest.raises(ValueError, match="at least 8 characters"):
        accounts.create("alice", "member", "short")
    with pytest.raises(ValueError, match="token prefix"):
        accounts.create("alice", "member", "rf_looks_like_a_token")
    assert accounts.count() == 0
    accounts.create("a.b_c-9", "viewer")
    assert [a.name for a in accounts.all()] == ["a.b_c-9"]


def test_roles_each_include_the_one_before():
    assert [str(r) for r in Role] == ["viewer", "member", "operator", "admin"]
    assert [r.rank for r in Role] == [0, 1, 2, 3]
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.OPERATOR.allows(Role.OPERATOR)
    assert Role.MEMBER.allows(Role.VIEWER) and not Role.MEMBER.allows(Role.OPERATOR)
    assert not Role.VIEWER.allows(Role.MEMBER)
    assert Role("admin") is Role.ADMIN and Role.ADMIN == "admin"


def test_changes_to_an_unknown_account_fail_and_create_nothing(accounts, redis):
    for change in (
        lambda: accounts.set_role("ghost", "admin"),
        lambda: accounts.set_password("ghost", PASSWORD),
        lambda: accounts.disable("ghost"),
        lambda: accounts.enable("ghost"),
        lambda: accounts.set_limits("ghost", max_queued=1),
        lambda: accounts.create_token("ghost"),
    ):
        with pytest.raises(UnknownAccount, match="no account 'ghost'"):
            change()
    assert redis.dbsize() == 0


def test_tokens_are_random_prefixed_shown_once_and_found_by_hash(accounts, redis):
    accounts.create("alice", "member", PASSWORD)
    token, secret = accounts.create_token("alice", label="laptop")
    assert secret.startswith("rf_")
    assert len(base64.urlsafe_b64decode(secret[3:] + "=")) * 8 >= 256
    assert secret not in stored_values(redis).decode()
    assert redis.get(keys.token_by_hash(digest(secret))) == token.id.encode()
    assert token.last_used is None and token.label == "laptop"
    assert set(token.as_dict()) == {
        "id",
        "account",
        "label",
        "created_at",
        "last_used",
        "expires_at",
    }

    account, used = accounts.check_token(secret)
    assert account.name == "alice" and used.id == token.id
    assert used.last_used is not None and used.last_used >= token.created_at
    assert accounts.tokens.list("alice")[0].last_used == used.last_used
    assert accounts.check_token(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert accounts.check_token("rf_nonsense") is None
    _, other = accounts.create_token("alice")
    assert other != secret


def test_a_tokens_use_is_recorded_to_the_minute_and_a_repeat_writes_nothing(tmp_path):
    """A program polling with its token makes its requests reads: Redis records nothing new
    (no append-only file growth, nothing for the replicas) until the use recorded is a
    minute old. (A Redis of its own, persistence on as the farm's: the counters are the
    server's.)"""
    port = localfarm.free_port()
    server = localfarm.start_redis(port, tmp_path / "redis")
    try:
        redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")
        accounts = Accounts(redis, Settings(), hasher=FAST)
        accounts.create("alice", "member", PASSWORD)
        token, secret = accounts.create_token("alice")
        first = accounts.check_token(secret)[1].last_used

        def written() -> tuple[int, int]:
            info = redis.info("persistence")
            return info["rdb_changes_since_last_save"], info["aof_current_size"]

        before = written()
        for _ in range(5):
            assert accounts.check_token(secret)[1].last_used == first
        assert written() == before
        redis.hset(keys.token(token.id), "last_used", first - MARK_USE_S)  # a minute ago
        later = accounts.check_token(secret)[1].last_used
        assert later > first - MARK_USE_S and accounts.tokens.list("alice")[0].last_used == later
    finally:
        localfarm.stop(server)


def test_an_account_holds_a_bounded_number_of_tokens_with_bounded_labels(accounts, redis):
    accounts.create("alice", "member", PASSWORD)
    for bad in ("x" * (MAX_LABEL + 1), "two\nlines"):
        with pytest.raises(ValueError, match=f"at most {MAX_LABEL} printable characters"):
            accounts.create_token("alice", label=bad)
    assert accounts.tokens.list("alice") == []
    made = [accounts.create_token("alice", label="x" * MAX_LABEL)[0]]
    made += [accounts.create_token("alice")[0] for _ in range(MAX_PER_ACCOUNT - 1)]
    with pytest.raises(TooManyTokens, match=f"alice has {MAX_PER_ACCOUNT} tokens"):
        accounts.create_token("alice")
    assert len(accounts.tokens.list("alice")) == MAX_PER_ACCOUNT
    accounts.tokens.revoke("alice", made[0].id)
    accounts.create_token("alice")  # room again


def test_an_expired_token_stops_working(accounts):
    accounts.create("alice", "member", PASSWORD)
    token, secret = accounts.create_token("alice", expires_at=time.time() + 1.0)
    assert token.expires_at is not None
    assert accounts.check_token(secret) is not None
    time.sleep(1.2)
    assert accounts.check_token(secret) is None


def test_revoking_a_token_is_effective_on_the_next_lookup(accounts, redis):
    accounts.create("alice", "member", PASSWORD)
    t1, s1 = accounts.create_token("alice", label="one")
    t2, s2 = accounts.create_token("alice", label="two")
    assert [t.label for t in accounts.tokens.list("alice")] == ["one", "two"]
    assert accounts.check_token(s1) is not None
    assert not accounts.tokens.revoke("bob", t1.id)  # not bob's
    assert accounts.tokens.revoke("alice", t1.id)
    assert accounts.check_token(s1) is None
    assert accounts.check_token(s2) is not None
    assert not accounts.tokens.revoke("alice", t1.id)

    accounts.create_token("alice", label="three")
    assert accounts.tokens.revoke_all("alice") == 2
    assert accounts.check_token(s2) is None and accounts.tokens.list("alice") == []
    assert not list(redis.scan_iter(match="rf:token*"))


def test_disabling_ends_tokens_and_sessions_at_once(accounts):
    alice = accounts.create("alice", "member", PASSWORD)
    _, secret = accounts.create_token("alice")
    assert accounts.account_for_session(alice.session_id) == alice

    disabled = accounts.disable("alice")
    assert disabled.disabled and disabled.session_id != alice.session_id
    assert accounts.account_for_session(alice.session_id) is None
    assert accounts.account_for_session(disabled.session_id) is None
    assert accounts.check_token(secret) is None
    assert accounts.check_password("alice", PASSWORD) is None
    with pytest.raises(ValueError, match="disabled"):
        accounts.create_token("alice")

    enabled = accounts.enable("alice")
    assert accounts.check_password("alice", PASSWORD) is not None
    assert accounts.account_for_session(alice.session_id) is None  # old cookies stay ended
    assert accounts.check_token(secret) is None  # and so do old tokens
    assert accounts.account_for_session(enabled.session_id) == enabled


def test_a_new_password_ends_the_sessions(accounts):
    alice = accounts.create("alice", "member", PASSWORD)
    changed = accounts.set_password("alice", "another good password")
    assert accounts.account_for_session(alice.session_id) is None
    assert accounts.account_for_session(changed.session_id) is not None
    assert accounts.check_password("alice", PASSWORD) is None
    assert accounts.check_password("alice", "another good password") is not None
    assert accounts.account_for_session("alice") is None
    assert accounts.account_for_session("alice:x") is None


def test_the_last_enabled_admin_can_be_neither_demoted_nor_disabled(accounts):
    accounts.create("root", "admin", PASSWORD)
    accounts.create("ops", "admin")
    accounts.disable("ops")  # a disabled admin manages nothing: it does not count
    for change in (lambda: accounts.set_role("root", "member"), lambda: accounts.disable("root")):
        with pytest.raises(LastAdmin, match="root is the only enabled admin"):
            change()
    root = accounts.get("root")
    assert (root.role, root.disabled) == (Role.ADMIN, False)
    assert accounts.check_password("root", PASSWORD) is not None, "its sessions went on"

    accounts.enable("ops")
    assert accounts.set_role("root", "member").role is Role.MEMBER
    with pytest.raises(LastAdmin):
        accounts.disable("ops")
    assert accounts.set_role("ops", "admin").role is Role.ADMIN  # no demotion: allowed


def test_two_admins_demoting_each_other_at_once_leave_one(accounts, redis):
    def demote(name: str, start: threading.Barrier, refused: list[str]) -> None:
        mine = Accounts(Redis(connection_pool=redis.connection_pool), Settings())
        start.wait()
        try:
            mine.set_role(name, "member")
        except LastAdmin:
            refused.append(name)

    for _ in range(20):
        redis.flushdb()
        accounts.create("a", "admin")
        accounts.create("b", "admin")
        start, refused = threading.Barrier(2), []
        threads = [threading.Thread(target=demote, args=(n, start, refused)) for n in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(refused) == 1, refused
        assert [x.name for x in accounts.all() if x.role is Role.ADMIN] == refused


def test_the_api_refuses_to_remove_the_last_admin_naming_the_field(
    redis, redis_url, models_dir, tmp_path
):
    settings = settings_on_db(redis_url, 9, models_dir, tmp_path)  # the `redis` fixture's db
    client = create_app(settings).test_client()
    accounts = Accounts(redis, settings, hasher=FAST)
    accounts.create("root", "admin")
    secret = accounts.create_token("root")[1]
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"

    for body, field in (({"role": "member"}, "role"), ({"disabled": True}, "disabled")):
        resp = client.post("/api/v1/accounts/root", json=body)
        assert resp.status_code == 422, resp.get_json()
        [error] = resp.get_json()["errors"]
        assert error["field"] == field and "only enabled admin" in error["reason"], error
    assert client.get("/api/v1/me").get_json()["role"] == "admin"

    short = client.post(
        "/api/v1/accounts", json={"name": "carol", "role": "admin", "password": "x"}
    )
    assert short.status_code == 422
    assert [e["field"] for e in short.get_json()["errors"]] == ["password"]
    assert accounts.get("carol") is None
    assert (
        client.post("/api/v1/accounts", json={"name": "carol", "role": "admin"}).status_code == 201
    )
    assert client.post("/api/v1/accounts/root", json={"role": "member"}).status_code == 200
    entry = Audit(redis, 1000).recent(1)[0]
    assert (entry["action"], entry["target"], entry["detail"]) == (
        "account.role",
        "root",
        "admin -> member",
    )


def test_limits_come_from_the_role_unless_the_account_overrides_them(redis):
    settings = Settings(member_max_queued=7, member_max_running=2)
    accounts = Accounts(redis, settings, hasher=FAST)
    viewer = accounts.create("vera", "viewer")
    member = accounts.create("mo", "member")
    assert accounts.limits(viewer) == Quota(0, 0, ())
    assert accounts.limits(member) == Quota(7, 2, ("cpu", "openvino", "gpu"))

    assert accounts.set_limits("mo", max_running=1, hardware=["gpu", "cpu"]) == Quota(
        7, 1, ("cpu", "gpu")
    )
    promoted = accounts.set_role("mo", "operator")
    assert accounts.limits(promoted) == Quota(settings.operator_max_queued, 1, ("cpu", "gpu"))
    assert accounts.set_limits("vera", hardware=[]) == Quota(0, 0, ())
    with pytest.raises(ValueError, match="unknown hardware class"):
        accounts.set_limits("mo", hardware=["tpu"])
    with pytest.raises(ValueError, match="0 or more"):
        accounts.set_limits("mo", max_queued=-1)
    assert accounts.clear_limits("mo") == Quota(
        settings.operator_max_queued, settings.operator_max_running, ("cpu", "openvino", "gpu")
    )


def test_the_audit_log_records_newest_first_within_its_cap(redis):
    audit = Audit(redis, max_entries=50)
    entry_id = audit.record(
        "alice", "token.create", "alice", source="10.0.0.5", token_id="abc", detail="laptop"
    )
    [entry] = audit.recent(10)
    assert entry["id"] == entry_id and entry["time"] <= time.time()
    assert {k: entry[k] for k in ("actor", "action", "target", "source", "token_id")} == {
        "actor": "alice",
        "action": "token.create",
        "target": "alice",
        "source": "10.0.0.5",
        "token_id": "abc",
    }
    assert entry["detail"] == "laptop"

    for i in range(400):
        audit.record("cli:root" if i % 2 else "bob", "account.create", f"user{i}")
    assert redis.xlen(keys.audit_log()) < 401
    assert redis.xlen(keys.audit_log()) <= 50 + 100  # approximate trim: whole stream nodes
    newest = audit.recent(3)
    assert [e["target"] for e in newest] == ["user399", "user398", "user397"]
    assert newest[0]["token_id"] is None
    assert [e["target"] for e in audit.recent(2, actor="bob")] == ["user398", "user396"]
    assert all(e["actor"] == "cli:root" for e in audit.recent(500, actor="cli:root"))
    assert audit.recent(5, action="nothing") == []


def cli(redis: Redis, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`renderfarm ARGS` as a real process against the test db."""
    db = redis.connection_pool.connection_kwargs
    env = {**os.environ, "RENDERFARM_REDIS_URL": f"redis://{db['host']}:{db['port']}/{db['db']}"}
    return subprocess.run(
        [sys.executable, "-m", "renderfarm", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent,
        timeout=60,
    )


def test_the_cli_manages_accounts_and_tokens_and_audits_every_change(accounts, redis):
    assert (
        cli(
            redis,
            "users",
            "add",
            "alice",
            "--role",
            "member",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        ).returncode
        == 0
    )
    assert "service account" in cli(redis, "users", "add", "ci-bot", "--role", "member").stdout
    again = cli(redis, "users", "add", "alice", "--role", "viewer")
    assert again.returncode == 1 and "renderfarm users add: account 'alice' exists" in again.stderr
    assert accounts.check_password("alice", PASSWORD) is not None
    listing = cli(redis, "users", "list").stdout
    assert re.search(r"alice\s+member\s+enabled\s+person", listing)
    assert re.search(r"ci-bot\s+member\s+enabled\s+service", listing)

    made = cli(redis, "tokens", "create", "ci-bot", "--label", "ci", "--expires-days", "30")
    assert made.returncode == 0
    secret = made.stdout.splitlines()[-1]
    account, token = accounts.check_token(secret)
    assert account.name == "ci-bot" and token.label == "ci" and token.expires_at is not None
    tokens = cli(redis, "tokens", "list", "ci-bot").stdout
    assert token.id in tokens and secret not in tokens
    assert cli(redis, "users", "set-role", "ci-bot", "operator").returncode == 0
    assert accounts.get("ci-bot").role is Role.OPERATOR

    assert cli(redis, "tokens", "revoke", "ci-bot", token.id).returncode == 0
    assert accounts.check_token(secret) is None
    assert cli(redis, "tokens", "revoke", "ci-bot", token.id).returncode == 1
    more = [cli(redis, "tokens", "create", "ci-bot").stdout.splitlines()[-1] for _ in "ab"]
    revoked = cli(redis, "tokens", "revoke", "--all", "ci-bot")
    assert "revoked 2 token(s)" in revoked.stdout
    assert all(accounts.check_token(s) is None for s in more)

    assert cli(redis, "users", "disable", "alice").returncode == 0
    assert accounts.check_password("alice", PASSWORD) is None
    assert cli(redis, "users", "enable", "alice").returncode == 0
    passwd = cli(redis, "users", "passwd", "alice", "--password-stdin", stdin="a new password\n")
    assert passwd.returncode == 0
    assert accounts.check_password("alice", "a new password") is not None
    assert cli(redis, "users", "disable", "nobody").stderr.strip().endswith("no account 'nobody'")

    log = cli(redis, "audit", "--limit", "50").stdout.splitlines()
    actor = log[0].split()[2]
    assert actor.startswith("cli:")
    actions = [line.split()[3] for line in reversed(log)]
    assert actions == [
        "account.create",
        "account.create",
        "token.create",
        "account.role",
        "token.revoke",
        "token.create",
        "token.create",
        "token.revoke_all",
        "account.disable",
        "account.enable",
        "account.password",
    ]
    everything = stored_values(redis).decode(errors="replace") + "\n".join(log)
    assert PASSWORD not in everything and "a new password" not in everything
    assert not any(s in everything for s in [secret, *more])
    newest = cli(redis, "audit", "--limit", "2").stdout.splitlines()
    assert [line.split()[3] for line in newest] == ["account.password", "account.enable"]
    for args, said in (
        (("audit", "--limit", "0"), "argument --limit: must be 1 or more, not 0"),
        (("tokens", "create", "ci-bot", "--expires-days", "-3"),
         "argument --expires-days: must be 1 or more, not -3"),
    ):  # fmt: skip
        refused = cli(redis, *args)
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    assert len(accounts.tokens.list("ci-bot")) == 0, "no token was made"


def test_ensure_local_admin_only_on_a_farm_without_accounts(accounts, redis, tmp_path):
    token_file = tmp_path / "var" / "admin-token"
    password = ensure_local_admin(accounts, token_file)
    assert password and accounts.check_password("admin", password).role is Role.ADMIN
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    account, _ = accounts.check_token(token_file.read_text().strip())
    assert account.name == "admin"
    assert [e["action"] for e in Audit(redis, 100).recent(5)] == ["token.create", "account.create"]
    assert ensure_local_admin(accounts, tmp_path / "other") is None
    assert not (tmp_path / "other").exists() and accounts.count() == 1
