"""The fleet as the workers' heartbeats describe it."""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from shared import keys


def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """Every worker whose heartbeat has not expired, by name; stale names are pruned."""
    names = sorted(n.decode() for n in redis.smembers(keys.workers_index()))
    beats = redis.mget([keys.worker(n) for n in names]) if names else []
    stale = [n for n, beat in zip(names, beats, strict=True) if beat is None]
    if stale:
        redis.srem(keys.workers_index(), *stale)
    return [json.loads(beat) for beat in beats if beat is not None]
