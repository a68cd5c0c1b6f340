"""Team accounts in Redis: roles, argon2id passwords, session epochs, quotas and tokens.

An account without a password is a service account: it signs in with tokens only. Every
change that must end an account's browser sessions bumps its epoch, which is part of the
Flask-Login user id (`Account.session_id`): cookies carrying an older one are refused.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis import Redis

from dashboard.tokens import Token, Tokens, looks_like_token
from scheduler.quotas import Quota
from shared import keys
from shared.addresses import inside_address
from shared.config import Settings
from shared.vocabulary import Hardware

if TYPE_CHECKING:  # the type only: the command line's start need not import Celery
    from scheduler.control import JobControl

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD_LENGTH = 8


class Role(StrEnum):
    """Each role may do everything the ones before it may."""

    VIEWER = "viewer"  # sees everything, submits nothing
    MEMBER = "member"  # submits; steers its own jobs; manages its own tokens
    OPERATOR = "operator"  # steers any job; drains workers; reads metrics
    ADMIN = "admin"  # manages accounts, roles, anyone's tokens; reads the audit log

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    disabled: bool
    service: bool  # no password: tokens only
    created_at: float
    last_login: float | None
    epoch: int
    webhook_url: str = ""  # receives a POST when one of its jobs succeeds or fails
    # Its own quota overrides as stored (max_queued, max_running, hardware; None: the
    # role's), read with the rest of the account, so `Accounts.limits` costs no round trip.
    overrides: tuple[bytes | None, ...] = (None, None, None)

    @property
    def session_id(self) -> str:
        """Flask-Login's user id for this account's browser sessions."""
        return f"{self.name}:{self.epoch}"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "role": str(self.role),
            "disabled": self.disabled,
            "service": self.service,
            "created_at": self.created_at,
            "last_login": self.last_login,
            "webhook_url": self.webhook_url,
        }


class UnknownAccount(LookupError):
    def __init__(self, name: str):
        super().__init__(f"no account {name!r}")


class LastAdmin(ValueError):
    """The change would leave the farm with no enabled admin to manage it."""

    def __init__(self, name: str):
        super().__init__(f"{name} is the only enabled admin: make another account admin first")


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid account name {name!r}: 1-64 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    # HTTP Basic tells a token from a password by its prefix.
    if looks_like_token(password):
        raise ValueError("a password may not start with the token prefix 'rf_'")
    return password


def validate_webhook_url(url: str) -> str:
    """An http(s) URL with a host, at most 2000 characters ("" = none)."""
    if url == "":
        return url
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise ValueError('must be an http:// or https:// URL with a host (or "" to clear)')
    return url


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise ValueError(f"unknown role {value!r}: one of {', '.join(Role)}") from None


# KEYS: account hash, accounts index; ARGV: name, then field/value pairs. 0 if it exists.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""
# KEYS: account hash, accounts index; ARGV: '1' to bump the epoch, '1' if the change ends
# the account's standing as an admin (a demotion, disabling), then field/value pairs.
# 0 if no account (so an update never creates a partial one); -1, and nothing changed, if
# it would leave the farm without an enabled admin (checked here, so two admins demoting
# each other at once cannot both go).
_UPDATE = f"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local function admin(key)
  return redis.call('HGET', key, 'role') == 'admin' and redis.call('HGET', key, 'disabled') ~= '1'
end
if ARGV[2] == '1' and admin(KEYS[1]) then
  local another = false
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local key = '{keys.account("")}' .. name
    if key ~= KEYS[1] and admin(key) then another = true break end
  end
  if not another then return -1 end
end
if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[1], 'epoch', 1) end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
return 1
"""
# A rehash after a login must not undo a password change made meanwhile.
_REHASH = """
if redis.call('HGET', KEYS[1], 'password_hash') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'password_hash', ARGV[2])
end
"""
_LIMIT_FIELDS = (b"max_queued", b"max_running", b"hardware")


def _account(name: str, raw: dict[bytes, bytes]) -> Account:
    return Account(
        name=name,
        role=Role(raw[b"role"].decode()),
        disabled=raw.get(b"disabled") == b"1",
        service=not raw.get(b"password_hash"),
        created_at=float(raw[b"created_at"]),
        last_login=float(raw[b"last_login"]) if raw.get(b"last_login") else None,
        epoch=int(raw.get(b"epoch", 0)),
        webhook_url=raw.get(b"webhook_url", b"").decode(),
        overrides=tuple(raw.get(f) for f in _LIMIT_FIELDS),
    )


class Accounts:
    def __init__(self, redis: Redis, settings: Settings, hasher: PasswordHasher | None = None):
        self.redis = redis
        self.settings = settings
        self.hasher = hasher or PasswordHasher()  # argon2id
        self.tokens = Tokens(redis)
        self._create = redis.register_script(_CREATE)
        self._update_script = redis.register_script(_UPDATE)
        self._rehash = redis.register_script(_REHASH)

    @cached_property
    def _dummy_hash(self) -> str:
        """Verified against for unknown names and service accounts, so that a check takes
        as long whether or not the name exists."""
        return self.hasher.hash(secrets.token_urlsafe(16))

    # -- accounts -------------------------------------------------------------------------

    def create(self, name: str, role: Role | str, password: str | None = None) -> Account:
        """A new account; without a password, a service account (tokens only)."""
        validate_name(name)
        role = parse_role(role)
        fields = {
            "role": str(role),
            "disabled": "0",
            "password_hash": ""
            if password is None
            else self.hasher.hash(validate_password(password)),
            "created_at": repr(time.time()),
            "epoch": "0",
        }
        args = [name, *(x for pair in fields.items() for x in pair)]
        if not self._create(keys=[keys.account(name), keys.accounts_index()], args=args):
            raise ValueError(f"account {name!r} exists")
        return self._get(name)

    def get(self, name: str) -> Account | None:
        if not NAME_RE.fullmatch(name):
            return None
        raw = self.redis.hgetall(keys.account(name))
        return _account(name, raw) if raw else None

    def all(self) -> list[Account]:
        names = sorted(n.decode() for n in self.redis.smembers(keys.accounts_index()))
        pipe = self.redis.pipeline()
        for name in names:
            pipe.hgetall(keys.account(name))
        return [_account(n, raw) for n, raw in zip(names, pipe.execute(), strict=True) if raw]

    def count(self) -> int:
        return self.redis.scard(keys.accounts_index())

    def set_role(self, name: str, role: Role | str) -> Account:
        """Refused (LastAdmin) if it would leave no enabled admin."""
        role = parse_role(role)
        self._update(name, demotes=role != Role.ADMIN, role=str(role))
        return self._get(name)

    def set_password(self, name: str, password: str) -> Account:
        """Set (or, for a service account, add) the password; ends the browser sessions."""
        self._update(
            name, bump_epoch=True, password_hash=self.hasher.hash(validate_password(password))
        )
        return self._get(name)

    def disable(self, name: str) -> Account:
        """Disable the account: its browser sessions end (epoch bump) and its tokens are
        revoked, both effective on the next request.

        Its jobs are left alone here: `disable_and_cancel` cancels them too. Refused
        (LastAdmin) for the only enabled admin.
        """
        self._update(name, bump_epoch=True, demotes=True, disabled="1")
        self.tokens.revoke_all(name)
        return self._get(name)

    def disable_and_cancel(self, name: str, jobs: JobControl) -> tuple[Account, int]:
        """Disable the account and cancel every unfinished job it owns (API and CLI alike)."""
        account = self.disable(name)
        return account, jobs.cancel_all(name)

    def enable(self, name: str) -> Account:
        """Allow sign-in again (old sessions and tokens stay ended)."""
        self._update(name, disabled="0")
        return self._get(name)

    def set_webhook(self, name: str, url: str) -> Account:
        """Set (or, with "", clear) the account's webhook; the scheduler's notifier reads it
        from the shared hash `keys.webhooks()` (scheduler/ does not read accounts). One
        inside the farm's network is refused unless `webhook_allow_private`."""
        validate_webhook_url(url)
        if url and not self.settings.webhook_allow_private and (why := inside_address(url)):
            raise ValueError(why)
        self._update(name, webhook_url=url)
        if url:
            self.redis.hset(keys.webhooks(), name, url)
        else:
            self.redis.hdel(keys.webhooks(), name)
        return self._get(name)

    def end_sessions(self, name: str) -> Account:
        """End every browser session of the account (used by logout)."""
        self._update(name, bump_epoch=True)
        return self._get(name)

    def record_login(self, name: str) -> None:
        self._update(name, last_login=repr(time.time()))

    # -- credentials ----------------------------------------------------------------------

    def check_password(self, name: str, password: str) -> Account | None:
        """The enabled account with this name and password, else None — in the same time
        for an unknown name, a service account or a wrong password (one argon2 verify)."""
        raw = self.redis.hgetall(keys.account(name)) if NAME_RE.fullmatch(name) else {}
        stored = raw.get(b"password_hash", b"").decode()
        try:
            self.hasher.verify(stored or self._dummy_hash, password)
        except (VerificationError, InvalidHashError):
            return None
        if not stored:
            return None
        account = _account(name, raw)
        if account.disabled:
            return None
        if self.hasher.check_needs_rehash(stored):
            self._rehash(keys=[keys.account(name)], args=[stored, self.hasher.hash(password)])
        return account

    def check_token(self, secret: str) -> tuple[Account, Token] | None:
        """The enabled account and live token this secret belongs to, else None."""
        found = self.tokens.find(secret)
        if found is None:
            return None
        token, raw = found
        if not raw or not NAME_RE.fullmatch(token.account):
            return None
        account = _account(token.account, raw)
        return None if account.disabled else (account, token)

    def account_for_session(self, session_id: str) -> Account | None:
        """The enabled account a session cookie's user id names, if its epoch is current."""
        name, _, epoch = session_id.rpartition(":")
        account = self.get(name)
        if account is None or account.disabled:
            return None
        if not hmac.compare_digest(str(account.epoch), epoch):
            return None
        return account

    def create_token(
        self, name: str, label: str = "", expires_at: float | None = None
    ) -> tuple[Token, str]:
        """A new token for an enabled account, and its secret (shown once, never stored)."""
        account = self._get(name)
        if account.disabled:
            raise ValueError(f"account {name!r} is disabled")
        return self.tokens.create(name, label, expires_at)

    # -- quotas ---------------------------------------------------------------------------

    def limits(self, account: Account) -> Quota:
        """The account's quotas: its own overrides, else its role's defaults (settings)."""
        queued, running, hardware = account.overrides

        def default(field: str):
            return getattr(self.settings, f"{account.role}_{field}")

        return Quota(
            max_queued=default("max_queued") if queued is None else int(queued),
            max_running=default("max_running") if running is None else int(running),
            hardware=tuple(default("hardware"))
            if hardware is None
            else tuple(Hardware(h) for h in hardware.decode().split(",") if h),
        )

    def set_limits(
        self,
        name: str,
        *,
        max_queued: int | None = None,
        max_running: int | None = None,
        hardware: tuple[str, ...] | list[str] | None = None,
    ) -> Quota:
        """Override some of the account's quotas (None: leave that one as it is)."""
        fields: dict[str, str] = {}
        for field, value in (("max_queued", max_queued), ("max_running", max_running)):
            if value is not None:
                if value < 0:
                    raise ValueError(f"{field} must be 0 or more, not {value}")
                fields[field] = str(value)
        if hardware is not None:
            unknown = set(hardware) - set(Hardware)
            if unknown:
                raise ValueError(
                    f"unknown hardware class(es) {', '.join(sorted(unknown))}: "
                    f"one of {', '.join(Hardware)}"
                )
            fields["hardware"] = ",".join(h for h in Hardware if h in hardware)
        self._update(name, **fields)
        return self.limits(self._get(name))

    def clear_limits(self, name: str) -> Quota:
        """Drop the account's overrides: its role's defaults apply again."""
        self._get(name)
        self.redis.hdel(keys.account(name), *_LIMIT_FIELDS)
        return self.limits(self._get(name))

    # -- helpers --------------------------------------------------------------------------

    def _get(self, name: str) -> Account:
        account = self.get(name)
        if account is None:
            raise UnknownAccount(name)
        return account

    def _update(
        self, name: str, bump_epoch: bool = False, demotes: bool = False, **fields: str
    ) -> None:
        flags = ["1" if bump_epoch else "0", "1" if demotes else "0"]
        args = [*flags, *(x for pair in fields.items() for x in pair)]
        done = self._update_script(keys=[keys.account(name), keys.accounts_index()], args=args)
        if done == -1:
            raise LastAdmin(name)
        if not done:
            raise UnknownAccount(name)
