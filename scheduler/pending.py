"""Jobs waiting for dispatch, one sorted set per owner, taken out fairly.

Within an owner, jobs are ordered by priority, then age. Across owners, the dispatcher
looks at every owner's best jobs and prefers higher priority, then the owner it served
longest ago — so one user's 500-job batch cannot hold back a teammate's single job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline

from shared import keys
from shared.vocabulary import Priority

_RANK_SPAN = 10**13  # larger than any creation time in milliseconds

# KEYS: the owner's pending set, the owners. ARGV: job id, owner, when the owner was served
# ("" = not served). The job leaves; an owner left with none leaves the owners in the same
# step (a submission in between cannot be stranded).
_TAKE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[2])
end
return removed
"""


@dataclass(frozen=True)
class Candidate:
    job_id: str
    owner: str
    rank: int  # 0 = high priority
    created_ms: int
    owner_served_at: float


def score(priority: Priority, created_at: float) -> int:
    return priority.rank * _RANK_SPAN + int(created_at * 1000)


# KEYS: the owners. ARGV: depth, the pending sets' key prefix, "all" or "these", then the
# owners (for "these").
# The owners with their served-at scores, and each owner's head as one string: job id,
# score, job id, score, ... separated by spaces (job ids are hex).
_HEADS = """
local served = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local owners = {}
if ARGV[3] == 'these' then
  for i = 4, #ARGV do owners[#owners + 1] = ARGV[i] end
else
  for i = 1, #served, 2 do owners[#owners + 1] = served[i] end
end
local heads = {}
for i, owner in ipairs(owners) do
  local head = redis.call('ZRANGE', ARGV[2] .. owner, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
  heads[i] = table.concat(head, ' ')
end
return {served, heads}
"""


class PendingJobs:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._take = redis.register_script(_TAKE)
        self._heads = redis.register_script(_HEADS)

    def add(self, job_id: str, owner: str, priority: Priority, created_at: float) -> None:
        with self.redis.pipeline() as pipe:
            self.add_in(pipe, job_id, owner, priority, created_at)
            pipe.execute()

    def add_in(
        self,
        pipe: Pipeline,
        job_id: str,
        owner: str,
        priority: Priority,
        created_at: float,
        wake: bool = True,
    ) -> None:
        """`add`, queued on `pipe` (`wake`: wake the dispatcher; one wake-up serves many)."""
        pipe.zadd(keys.pending(owner), {job_id: score(priority, created_at)})
        pipe.zadd(keys.pending_owners(), {owner: 0}, nx=True)  # new owners go first
        if wake:
            pipe.lpush(keys.wake(), 1)

    def remove(self, job_id: str, owner: str) -> bool:
        """Take a job out; false if it was not pending (already dispatched or gone)."""
        return bool(self._take_out(job_id, owner, ""))

    def remove_in(self, pipe: Pipeline, job_id: str, owner: str) -> None:
        """`remove`, queued on `pipe`."""
        self._take_out(job_id, owner, "", pipe)

    def take_in(self, pipe: Pipeline, job_id: str, owner: str, served_at: float) -> None:
        """Queued on `pipe`: the job leaves for a worker and its owner was served now."""
        self._take_out(job_id, owner, served_at, pipe)

    def _take_out(
        self, job_id: str, owner: str, served_at: float | str, pipe: Pipeline | None = None
    ) -> Any:
        """The job out of its owner's queue (`served_at` "": the owner is not counted served)."""
        sets = [keys.pending(owner), keys.pending_owners()]
        return self._take(keys=sets, args=[job_id, owner, served_at], client=pipe)

    def heads(
        self, depth: int, owners: list[str] | None = None
    ) -> tuple[dict[str, float], dict[str, list[tuple[str, int, int]]]]:
        """When each owner with pending jobs was last served, and each one's best `depth`
        jobs as (job id, rank, created ms), best first; of `owners` only, if given. One
        round trip, each owner's jobs as one string (not a reply element per job)."""
        which = ["all"] if owners is None else ["these", *owners]
        served, found = self._heads(
            keys=[keys.pending_owners()], args=[depth, keys.pending(""), *which]
        )
        served_at = {o.decode(): float(t) for o, t in zip(served[::2], served[1::2], strict=True)}
        names = owners if owners is not None else list(served_at)
        heads = {}
        for owner, packed in zip(names, found, strict=True):
            words = packed.split()
            jobs = []
            for job_b, value in zip(words[::2], words[1::2], strict=True):
                rank, created_ms = divmod(int(float(value)), _RANK_SPAN)
                jobs.append((job_b.decode(), rank, created_ms))
            heads[owner] = jobs
        return served_at, heads

    def reprioritize(self, job_id: str, owner: str, priority: Priority, created_at: float) -> bool:
        """Move a pending job to another priority; false if it is not pending."""
        if self.redis.zscore(keys.pending(owner), job_id) is None:
            return False
        self.redis.zadd(keys.pending(owner), {job_id: score(priority, created_at)}, xx=True)
        return True

    def served(self, owner: str) -> None:
        self.redis.zadd(keys.pending_owners(), {owner: time.time()}, xx=True)
