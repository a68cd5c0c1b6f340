"""API tokens: random secrets shown once, stored only as their SHA-256, found by it in O(1).

This layer knows nothing of account state; `Accounts` checks that a token's account may
still sign in (`Accounts.check_token`).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from redis import Redis

from shared import keys

PREFIX = "rf_"
SECRET_BYTES = 32  # 256 bits of randomness
MAX_LABEL = 200  # characters
MAX_PER_ACCOUNT = 100  # live tokens: one per script or machine is plenty


class TooManyTokens(RuntimeError):
    """The account holds `MAX_PER_ACCOUNT` live tokens already: one must be revoked first."""


def check_label(label: str) -> None:
    if len(label) > MAX_LABEL or not label.isprintable():
        raise ValueError(f"must be at most {MAX_LABEL} printable characters")


MARK_USE_S = 60  # a token's last use is recorded to the minute

# Record a use of a live token and return it; nothing for a revoked or expired one (and a
# token revoked meanwhile is not recreated by the write).
# KEYS[1]: the secret's hash key. One round trip for a request's credentials: the token
# (unless unknown or expired; its last use recorded) and the hash of the account it is of.
# The use is written only when the one recorded is MARK_USE_S old: a request is otherwise a
# read, so polling clients add nothing to the append-only file or the replicas' stream.
_USE = f"""
local token_id = redis.call('GET', KEYS[1])
if not token_id then return false end
local token = '{keys.token("")}' .. token_id
if redis.call('EXISTS', token) == 0 then return false end
local expires_at = redis.call('HGET', token, 'expires_at')
if expires_at and tonumber(expires_at) <= tonumber(ARGV[1]) then return false end
local last = redis.call('HGET', token, 'last_used')
if not last or tonumber(ARGV[1]) - tonumber(last) >= {MARK_USE_S} then
  redis.call('HSET', token, 'last_used', ARGV[1])
end
local account = redis.call('HGET', token, 'account')
return {{token_id, redis.call('HGETALL', token),
  redis.call('HGETALL', '{keys.account("")}' .. account)}}
"""


@dataclass(frozen=True)
class Token:
    id: str
    account: str
    label: str
    created_at: float
    last_used: float | None
    expires_at: float | None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "account": self.account,
            "label": self.label,
            "created_at": self.created_at,
            "last_used": self.last_used,
            "expires_at": self.expires_at,
        }


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_token(value: str) -> bool:
    return value.startswith(PREFIX)


def _token(token_id: str, raw: dict[bytes, bytes]) -> Token:
    def opt(field: bytes) -> float | None:
        return float(raw[field]) if raw.get(field) else None

    return Token(
        id=token_id,
        account=raw[b"account"].decode(),
        label=raw.get(b"label", b"").decode(),
        created_at=float(raw[b"created_at"]),
        last_used=opt(b"last_used"),
        expires_at=opt(b"expires_at"),
    )


class Tokens:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._use = redis.register_script(_USE)

    def create(
        self, account: str, label: str = "", expires_at: float | None = None
    ) -> tuple[Token, str]:
        """A new token and its secret; the secret is returned here only, never stored. A
        label `check_label` refuses is a ValueError; an account at `MAX_PER_ACCOUNT`,
        TooManyTokens (two made at once may both pass: the bound is on a person's clicks)."""
        check_label(label)
        if len(self.list(account)) >= MAX_PER_ACCOUNT:
            raise TooManyTokens(
                f"{account} has {MAX_PER_ACCOUNT} tokens, the most an account may hold: "
                "revoke one first"
            )
        secret = PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        token = Token(secrets.token_hex(8), account, label, time.time(), None, expires_at)
        record = {
            "account": account,
            "label": token.label,
            "hash": digest(secret),
            "created_at": token.created_at,
        }
        if expires_at is not None:
            record["expires_at"] = expires_at
        pipe = self.redis.pipeline()
        pipe.hset(keys.token(token.id), mapping=record)
        pipe.set(keys.token_by_hash(record["hash"]), token.id)
        pipe.sadd(keys.account_tokens(account), token.id)
        if expires_at is not None:
            # Redis drops an expired token by itself; `find` checks the exact time.
            pipe.expireat(keys.token(token.id), int(expires_at) + 1)
            pipe.expireat(keys.token_by_hash(record["hash"]), int(expires_at) + 1)
        pipe.execute()
        return token, secret

    def find(self, secret: str) -> tuple[Token, dict[bytes, bytes]] | None:
        """The live token with this secret, its last use recorded, and the raw hash of its
        account (empty if the account is gone); None if unknown, revoked or expired. Found by
        the secret's hash, so no comparison of secrets takes place."""
        found = self._use(keys=[keys.token_by_hash(digest(secret))], args=[time.time()])
        if not found:
            return None
        token_id, flat, account = found
        token = _token(token_id.decode(), dict(zip(flat[::2], flat[1::2], strict=True)))
        return token, dict(zip(account[::2], account[1::2], strict=True))

    def list(self, account: str) -> list[Token]:
        """The account's tokens, oldest first (ids of tokens Redis expired are pruned)."""
        ids = sorted(i.decode() for i in self.redis.smembers(keys.account_tokens(account)))
        pipe = self.redis.pipeline()
        for token_id in ids:
            pipe.hgetall(keys.token(token_id))
        found, gone = [], []
        for token_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                found.append(_token(token_id, raw))
            else:
                gone.append(token_id)
        if gone:
            self.redis.srem(keys.account_tokens(account), *gone)
        return sorted(found, key=lambda t: t.created_at)

    def revoke(self, account: str, token_id: str) -> bool:
        """Delete one of the account's tokens; False if it has no such token."""
        raw = self.redis.hgetall(keys.token(token_id))
        if not raw or raw[b"account"].decode() != account:
            return False
        pipe = self.redis.pipeline()
        pipe.delete(keys.token(token_id), keys.token_by_hash(raw[b"hash"].decode()))
        pipe.srem(keys.account_tokens(account), token_id)
        pipe.execute()
        return True

    def revoke_all(self, account: str) -> int:
        """Delete every token of the account; how many there were."""
        return sum(self.revoke(account, t.id) for t in self.list(account))
