"""Throttling of failed password checks, per source address and per account name.

Counted with the `limits` library (Flask-Limiter's own engine) in Redis, shared by every
dashboard replica, through the farm's connection pool. Used directly rather than as the
Flask-Limiter extension, whose hook would run on every request of the API for no route
limit at all (a sixth of a token-checked GET's server time, measured). Only failed
checks count, so a program that signs every request with a correct password keeps working;
once either budget is spent every password check for that address or name is refused until
the window moves on, right or wrong. Token checks never count: a token cannot be guessed.
"""

from __future__ import annotations

import hashlib
import math
import time

from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis

from shared import keys

SCOPE = "password"


class Throttled(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"too many failed password attempts; retry in {retry_after} s")
        self.retry_after = retry_after


class PasswordThrottle:
    def __init__(self, redis: Redis, per_address: str, per_name: str):
        # The URI only picks limits' Redis storage; the pool decides where it connects (the
        # farm's timeouts, and behind Sentinel it follows the master through a failover).
        storage = RedisStorage(
            "redis://", connection_pool=redis.connection_pool, key_prefix=keys.ratelimit_prefix()
        )
        self.strategy = MovingWindowRateLimiter(storage)
        self.budgets = (("address", parse(per_address)), ("name", parse(per_name)))

    def check(self, address: str | None, name: str) -> None:
        """Raise Throttled when the address or the name has no attempts left."""
        for (kind, limit), key in zip(self.budgets, self._keys(address, name), strict=True):
            if not self.strategy.test(limit, SCOPE, kind, key):
                reset_at, _ = self.strategy.get_window_stats(limit, SCOPE, kind, key)
                raise Throttled(max(1, math.ceil(reset_at - time.time())))

    def failed(self, address: str | None, name: str) -> None:
        """Count one failed check against both budgets."""
        for (kind, limit), key in zip(self.budgets, self._keys(address, name), strict=True):
            self.strategy.hit(limit, SCOPE, kind, key)

    @staticmethod
    def _keys(address: str | None, name: str) -> tuple[str, str]:
        # A name typed by anyone becomes part of a Redis key: hashed, so its size is bounded.
        return address or "unknown", hashlib.sha256(name.lower().encode()).hexdigest()[:32]
