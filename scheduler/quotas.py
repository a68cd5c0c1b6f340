"""Per-account quotas as job control and the dispatcher apply them.

The accounts (dashboard/accounts.py) decide each account's quota; job control refuses a
submission over `max_queued` or for a hardware class the account may not use, and the
dispatcher starts at most `max_running` of an owner's jobs at once (the rest wait).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

from shared import keys
from shared.vocabulary import Hardware


@dataclass(frozen=True)
class Quota:
    max_queued: int  # jobs waiting or dispatched, not yet running
    max_running: int
    hardware: tuple[Hardware, ...]  # the classes its jobs may run on


class QuotaExceeded(Exception):
    """A submission over one of the account's quotas; `limit` names which."""

    def __init__(self, limit: str, reason: str) -> None:
        super().__init__(reason)
        self.limit = limit
        self.reason = reason


def publish_running_limit(redis: Redis | Pipeline, owner: str, max_running: int) -> None:
    """Tell the dispatcher how many of `owner`'s jobs may run at once."""
    redis.hset(keys.running_limits(), owner, max_running)


def running_limits(redis: Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(keys.running_limits()).items()}
