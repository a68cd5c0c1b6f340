"""The fleet: the workers as their heartbeats describe them, and draining a worker."""

from __future__ import annotations

import json
from typing import Any

from redis import Redis

from shared import keys

WORKER_STATES = ("idle", "busy", "draining", "stalled")


def worker_state(worker: dict[str, Any], draining: bool) -> str:
    """What the Workers page, `renderfarm workers` and `renderfarm_workers{state}` say."""
    if worker.get("stalled_job"):
        return "stalled"
    if draining:
        return "draining"
    return "busy" if worker.get("current_job") else "idle"


def live_workers(redis: Redis) -> list[dict[str, Any]]:
    """Every worker whose heartbeat has not expired, by name; stale names are pruned."""
    names = sorted(n.decode() for n in redis.smembers(keys.workers_index()))
    beats = redis.mget([keys.worker(n) for n in names]) if names else []
    stale = [n for n, beat in zip(names, beats, strict=True) if beat is None]
    if stale:
        redis.srem(keys.workers_index(), *stale)
    return [json.loads(beat) for beat in beats if beat is not None]


def is_live(redis: Redis, worker: str) -> bool:
    """Whether the worker's heartbeat has not expired (what `live_workers` lists)."""
    return bool(redis.exists(keys.worker(worker)))


def drain(redis: Redis, worker: str, draining: bool = True) -> None:
    """A draining worker finishes its job and is sent no new ones."""
    if draining:
        redis.set(keys.drain(worker), 1)
    else:
        redis.delete(keys.drain(worker))


def draining(redis: Redis, workers: list[str]) -> frozenset[str]:
    """Which of `workers` are draining, in one round trip (a page or scrape of the fleet)."""
    if not workers:
        return frozenset()
    flags = redis.mget([keys.drain(n) for n in workers])
    return frozenset(n for n, flag in zip(workers, flags, strict=True) if flag is not None)


def is_draining(redis: Redis, worker: str) -> bool:
    return bool(redis.exists(keys.drain(worker)))
