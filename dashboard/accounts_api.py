"""REST API v1 for accounts, tokens and the audit log.

Anyone signed in reads who they are; members manage their own tokens; admins manage every
account, anyone's tokens, and read the audit log. A token's secret is in the answer that
creates it and nowhere else.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify, request

from dashboard import farm
from dashboard.accounts import Role, UnknownAccount, parse_role, validate_password
from dashboard.api import BadRequest, int_arg, json_body
from dashboard.auth import audit_event, current_account, require
from dashboard.tokens import TooManyTokens, check_label

accounts_api = Blueprint("accounts_api", __name__)
MAX_TOKEN_DAYS = 3650


@accounts_api.errorhandler(UnknownAccount)
def _unknown(exc: UnknownAccount):
    return jsonify(error=str(exc)), 404


@accounts_api.errorhandler(TooManyTokens)
def _too_many_tokens(exc: TooManyTokens):
    return jsonify(error=str(exc)), 409


@accounts_api.errorhandler(BadRequest)
def _bad_request(exc: BadRequest):
    return jsonify(error="invalid request", errors=exc.errors), exc.status


def _field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(422, name, "is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(422, name, f"must be a {kind.__name__}")
    return value


def _valid(field: str, call):
    try:
        return call()
    except ValueError as exc:
        raise BadRequest(422, field, str(exc)) from None


@accounts_api.get("/me")
@require(Role.VIEWER)
def me():
    account = current_account()
    limits = farm.accounts().limits(account)
    return jsonify(
        **account.as_dict(),
        limits={
            "max_queued": limits.max_queued,
            "max_running": limits.max_running,
            "hardware": list(limits.hardware),
        },
    )


@accounts_api.post("/me")
@require(Role.MEMBER)
def update_me():
    """{"webhook_url": "https://..."} ("" clears it): POSTed to when a job of yours ends."""
    body = json_body()
    url = _field(body, "webhook_url", str, required=True)
    account = _valid(
        "webhook_url", lambda: farm.accounts().set_webhook(current_account().name, url)
    )
    audit_event("account.webhook", account.name, "cleared" if not url else "set")
    return jsonify(account.as_dict())


@accounts_api.get("/accounts")
@require(Role.ADMIN)
def list_accounts():
    return jsonify(accounts=[a.as_dict() for a in farm.accounts().all()])


@accounts_api.post("/accounts")
@require(Role.ADMIN)
def create_account():
    """{"name", "role", "password"?}: without a password, a service account (tokens only)."""
    body = json_body()
    name = _field(body, "name", str, required=True)
    role = _valid("role", lambda: parse_role(_field(body, "role", str, required=True)))
    password = _field(body, "password", str)
    if password is not None:
        _valid("password", lambda: validate_password(password))
    account = _valid("name", lambda: farm.accounts().create(name, role, password))
    audit_event("account.create", account.name, f"role {account.role}")
    return jsonify(account.as_dict()), 201


@accounts_api.post("/accounts/<name>")
@require(Role.ADMIN)
def update_account(name: str):
    """{"role"?, "disabled"?, "password"?}; disabling cancels the account's unfinished jobs."""
    body, accounts = json_body(), farm.accounts()
    if (before := accounts.get(name)) is None:
        raise UnknownAccount(name)
    if (role := _field(body, "role", str)) is not None:
        after = _valid("role", lambda: accounts.set_role(name, role))
        audit_event("account.role", name, f"{before.role} -> {after.role}")  # as the CLI's
    if (password := _field(body, "password", str)) is not None:
        _valid("password", lambda: accounts.set_password(name, password))
        audit_event("account.password", name)
    disabled = _field(body, "disabled", bool)
    if disabled:
        _, canceled = _valid("disabled", lambda: accounts.disable_and_cancel(name, farm.jobs()))
        audit_event("account.disable", name, f"{canceled} jobs canceled")
    elif disabled is False:
        accounts.enable(name)
        audit_event("account.enable", name)
    return jsonify(accounts.get(name).as_dict())


def _tokens_of() -> str:
    """Whose tokens: the caller's own, or (admins) the `account` asked for."""
    me = current_account()
    name = request.args.get("account") or json_body(optional=True).get("account") or me.name
    if name != me.name and not me.role.allows(Role.ADMIN):
        raise BadRequest(403, "account", "only admins manage another account's tokens")
    if farm.accounts().get(name) is None:
        raise UnknownAccount(name)
    return name


@accounts_api.get("/tokens")
@require(Role.MEMBER)
def list_tokens():
    return jsonify(tokens=[t.as_dict() for t in farm.accounts().tokens.list(_tokens_of())])


@accounts_api.post("/tokens")
@require(Role.MEMBER)
def create_token():
    """{"label"?, "expires_days"?, "account"? (admins)}: the secret is shown this once."""
    body = json_body()
    name = _tokens_of()
    label = _field(body, "label", str) or ""
    _valid("label", lambda: check_label(label))
    days = _field(body, "expires_days", int)
    if days is not None and not 1 <= days <= MAX_TOKEN_DAYS:
        raise BadRequest(422, "expires_days", f"must be between 1 and {MAX_TOKEN_DAYS}")
    expires_at = time.time() + days * 86400 if days else None
    token, secret = _valid("account", lambda: farm.accounts().create_token(name, label, expires_at))
    audit_event("token.create", name, f"token {token.id}")
    return jsonify(**token.as_dict(), token=secret), 201


@accounts_api.delete("/tokens/<token_id>")
@require(Role.MEMBER)
def revoke_token(token_id: str):
    name = _tokens_of()
    if not farm.accounts().tokens.revoke(name, token_id):
        return jsonify(error=f"{name} has no token {token_id!r}"), 404
    audit_event("token.revoke", name, f"token {token_id}")
    return jsonify(revoked=token_id)


@accounts_api.get("/audit")
@require(Role.ADMIN)
def audit_log():
    limit = min(max(int_arg("limit", 100), 1), 1000)
    filters = {k: request.args.get(k) for k in ("actor", "action", "target")}
    return jsonify(entries=farm.audit().recent(limit, **filters))
