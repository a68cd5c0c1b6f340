"""`renderfarm users | tokens | audit`: accounts managed straight in Redis.

Whoever runs these on a farm host (with its Redis URL) is trusted; every change is written
to the audit log as actor `cli:<os user>`.
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path

from dashboard.accounts import Accounts, Role, UnknownAccount
from dashboard.audit import Audit
from dashboard.tokens import TooManyTokens
from shared.cliargs import whole_number
from shared.config import Settings, redis_client


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the `users`, `tokens` and `audit` commands to the `renderfarm` parser."""
    roles = [str(r) for r in Role]
    users = sub.add_parser("users", help="manage accounts").add_subparsers(
        dest="users_command", required=True
    )
    p = users.add_parser("add", help="create an account")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=roles)
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read a password from stdin; without it, a service account (tokens only)",
    )
    p.set_defaults(func=cmd_users_add)
    p = users.add_parser("list", help="list the accounts")
    p.set_defaults(func=cmd_users_list)
    p = users.add_parser("set-role", help="change an account's role")
    p.add_argument("name")
    p.add_argument("role", choices=roles)
    p.set_defaults(func=cmd_users_set_role)
    p = users.add_parser("disable", help="disable an account: its sessions and tokens end")
    p.add_argument("name")
    p.set_defaults(func=cmd_users_disable)
    p = users.add_parser("enable", help="let a disabled account sign in again")
    p.add_argument("name")
    p.set_defaults(func=cmd_users_enable)
    p = users.add_parser("passwd", help="set an account's password (its sessions end)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", required=True)
    p.set_defaults(func=cmd_users_passwd)

    tokens = sub.add_parser("tokens", help="manage API tokens").add_subparsers(
        dest="tokens_command", required=True
    )
    p = tokens.add_parser("create", help="create a token; it is printed once, on the last line")
    p.add_argument("name")
    p.add_argument("--label", default="")
    p.add_argument("--expires-days", type=whole_number(1), metavar="N", help="expire after N days")
    p.set_defaults(func=cmd_tokens_create)
    p = tokens.add_parser("list", help="list an account's tokens (never their secrets)")
    p.add_argument("name")
    p.set_defaults(func=cmd_tokens_list)
    p = tokens.add_parser("revoke", help="revoke a token, or --all of an account's tokens")
    p.add_argument("name")
    p.add_argument("token_id", nargs="?", metavar="TOKEN_ID")
    p.add_argument("--all", action="store_true", help="revoke every token of the account")
    p.set_defaults(func=cmd_tokens_revoke)

    p = sub.add_parser("audit", help="print the audit log, newest first")
    p.add_argument("--limit", type=whole_number(1), default=50, help="how many (default 50)")
    p.set_defaults(func=cmd_audit)


def ensure_local_admin(accounts: Accounts, token_file: Path) -> str | None:
    """For `renderfarm up` on a farm without accounts: create `admin` with a generated
    password (returned, for `up` to print once) and write an admin token to `token_file`
    (mode 0600). With accounts present, nothing happens and None is returned."""
    if accounts.count():
        return None
    password = secrets.token_urlsafe(18)
    try:
        accounts.create("admin", Role.ADMIN, password)
    except ValueError:  # another `up` made it first
        return None
    token, secret = accounts.create_token("admin", label="renderfarm up")
    token_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with wider permissions
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    audit = Audit(accounts.redis, accounts.settings.audit_max_entries)
    audit.record(_actor(), "account.create", "admin", detail="role admin (renderfarm up)")
    audit.record(_actor(), "token.create", "admin", detail=f"token {token.id} {token.label}")
    return password


# -- commands -----------------------------------------------------------------------------


def _command(fn: Callable[[argparse.Namespace, Accounts, Audit], int]):
    """Open the stores; a refused change is one line on stderr and exit code 1."""

    @wraps(fn)
    def run(args: argparse.Namespace) -> int:
        settings = Settings()
        redis = redis_client(settings)
        try:
            return fn(args, Accounts(redis, settings), Audit(redis, settings.audit_max_entries))
        except (ValueError, LookupError, TooManyTokens) as exc:
            words = (args.command, getattr(args, f"{args.command}_command", None))
            print(f"renderfarm {' '.join(filter(None, words))}: {exc}", file=sys.stderr)
            return 1

    return run


@_command
def cmd_users_add(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    password = _read_password() if args.password_stdin else None
    account = accounts.create(args.name, args.role, password)
    audit.record(_actor(), "account.create", account.name, detail=f"role {account.role}")
    kind = "service account (tokens only)" if account.service else "account"
    print(f"created {account.role} {kind} {account.name}")
    return 0


@_command
def cmd_users_list(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    listed = accounts.all()  # read first: a Redis that does not answer leaves no header behind
    print(f"{'name':<24} {'role':<9} {'status':<9} {'kind':<8} {'created':<17} last login")
    for a in listed:
        status = "disabled" if a.disabled else "enabled"
        kind = "service" if a.service else "person"
        print(
            f"{a.name:<24} {a.role:<9} {status:<9} {kind:<8} {_when(a.created_at):<17} "
            f"{_when(a.last_login)}"
        )
    return 0


@_command
def cmd_users_set_role(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    before = accounts.get(args.name)
    account = accounts.set_role(args.name, args.role)
    audit.record(_actor(), "account.role", account.name, detail=f"{before.role} -> {account.role}")
    print(f"{account.name} is now {account.role}")
    return 0


@_command
def cmd_users_disable(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    from scheduler.control import JobControl

    account, canceled = accounts.disable_and_cancel(args.name, JobControl(accounts.settings))
    audit.record(_actor(), "account.disable", account.name, detail=f"{canceled} jobs canceled")
    print(f"disabled {account.name}: its sessions and tokens have ended, {canceled} jobs canceled")
    return 0


@_command
def cmd_users_enable(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    account = accounts.enable(args.name)
    audit.record(_actor(), "account.enable", account.name)
    print(f"enabled {account.name}")
    return 0


@_command
def cmd_users_passwd(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    account = accounts.set_password(args.name, _read_password())
    audit.record(_actor(), "account.password", account.name)
    print(f"password of {account.name} set; its browser sessions have ended")
    return 0


@_command
def cmd_tokens_create(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    expires_at = time.time() + args.expires_days * 86400 if args.expires_days else None
    token, secret = accounts.create_token(args.name, args.label, expires_at)
    audit.record(_actor(), "token.create", args.name, detail=f"token {token.id} {token.label}")
    print(
        f"token {token.id} for {args.name}, expires {_when(expires_at) if expires_at else 'never'}"
    )
    print("it is shown only now; store it:")
    print(secret)
    return 0


@_command
def cmd_tokens_list(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    if accounts.get(args.name) is None:
        raise UnknownAccount(args.name)
    print(f"{'id':<17} {'created':<17} {'last used':<17} {'expires':<17} label")
    for t in accounts.tokens.list(args.name):
        print(
            f"{t.id:<17} {_when(t.created_at):<17} {_when(t.last_used):<17} "
            f"{_when(t.expires_at) if t.expires_at else 'never':<17} {t.label}"
        )
    return 0


@_command
def cmd_tokens_revoke(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    if args.all == (args.token_id is not None):
        raise ValueError("give either a TOKEN_ID or --all")
    if args.all:
        count = accounts.tokens.revoke_all(args.name)
        audit.record(_actor(), "token.revoke_all", args.name, detail=f"{count} tokens")
        print(f"revoked {count} token(s) of {args.name}")
        return 0
    if not accounts.tokens.revoke(args.name, args.token_id):
        raise LookupError(f"{args.name!r} has no token {args.token_id!r}")
    audit.record(_actor(), "token.revoke", args.name, detail=f"token {args.token_id}")
    print(f"revoked token {args.token_id} of {args.name}")
    return 0


@_command
def cmd_audit(args: argparse.Namespace, accounts: Accounts, audit: Audit) -> int:
    for e in audit.recent(args.limit):
        token = f" token={e['token_id']}" if e["token_id"] else ""
        print(
            f"{_when(e['time'], seconds=True)} {e['actor']} {e['action']} {e['target']} "
            f"from={e['source'] or '-'}{token} {e['detail']}".rstrip()
        )
    return 0


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\r\n")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return f"cli:uid{os.getuid()}"


def _when(ts: float | None, seconds: bool = False) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(ts))
