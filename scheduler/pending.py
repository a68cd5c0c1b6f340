"""Jobs waiting for dispatch, one sorted set per owner, taken out fairly.

Within an owner, jobs are ordered by priority, then age. Across owners, the dispatcher
looks at every owner's best jobs and prefers higher priority, then the owner it served
longest ago — so one user's 500-job batch cannot hold back a teammate's single job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

from shared import keys
from shared.vocabulary import Priority

_RANK_SPAN = 10**13  # larger than any creation time in milliseconds


@dataclass(frozen=True)
class Candidate:
    job_id: str
    owner: str
    rank: int  # 0 = high priority
    created_ms: int
    owner_served_at: float


def score(priority: Priority, created_at: float) -> int:
    return priority.rank * _RANK_SPAN + int(created_at * 1000)


def add_to(pipe: Pipeline, job_id: str, owner: str, priority: Priority, created_at: float) -> None:
    """Queue a job for dispatch, as part of a caller's transaction."""
    pipe.zadd(keys.pending(owner), {job_id: score(priority, created_at)})
    pipe.zadd(keys.pending_owners(), {owner: 0}, nx=True)  # new owners go first
    pipe.lpush(keys.wake(), 1)


class PendingJobs:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def add(self, job_id: str, owner: str, priority: Priority, created_at: float) -> None:
        with self.redis.pipeline() as pipe:
            add_to(pipe, job_id, owner, priority, created_at)
            pipe.execute()

    def remove(self, job_id: str, owner: str) -> bool:
        """Take a job out; false if it was not pending (already dispatched or gone)."""
        removed = bool(self.redis.zrem(keys.pending(owner), job_id))
        if removed and not self.redis.zcard(keys.pending(owner)):
            self.redis.zrem(keys.pending_owners(), owner)
        return removed

    def reprioritize(self, job_id: str, owner: str, priority: Priority, created_at: float) -> bool:
        """Move a pending job to another priority; false if it is not pending."""
        if self.redis.zscore(keys.pending(owner), job_id) is None:
            return False
        self.redis.zadd(keys.pending(owner), {job_id: score(priority, created_at)}, xx=True)
        return True

    def served(self, owner: str) -> None:
        self.redis.zadd(keys.pending_owners(), {owner: time.time()}, xx=True)

    def candidates(self, per_owner: int = 20) -> list[Candidate]:
        """Every owner's best pending jobs, in the order they should be dispatched."""
        found = []
        for owner_b, served_at in self.redis.zrange(keys.pending_owners(), 0, -1, withscores=True):
            owner = owner_b.decode()
            head = self.redis.zrange(keys.pending(owner), 0, per_owner - 1, withscores=True)
            if not head:
                self.redis.zrem(keys.pending_owners(), owner)
            for job_b, value in head:
                rank, created_ms = divmod(int(value), _RANK_SPAN)
                found.append(Candidate(job_b.decode(), owner, rank, created_ms, served_at))
        return sorted(found, key=lambda c: (c.rank, c.owner_served_at, c.created_ms))
