"""Leases: a running attempt holds one in Redis, renewed by its worker's heartbeat.

When a worker dies its lease expires within seconds, and the reaper requeues the job
(not the broker's visibility timeout, which must stay above the longest job).
"""

from __future__ import annotations

from redis import Redis

from shared import keys

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def token(attempt: int, worker: str) -> str:
    return f"{attempt}:{worker}"


class Leases:
    def __init__(self, redis: Redis, lease_s: float) -> None:
        self.redis = redis
        self.lease_ms = int(lease_s * 1000)
        self._renew = redis.register_script(_RENEW)

    def take(self, job_id: str, attempt: int, worker: str) -> None:
        self.redis.set(keys.lease(job_id), token(attempt, worker), px=self.lease_ms)

    def renew(self, job_id: str, attempt: int, worker: str) -> bool:
        """Extend our lease; false if it is gone or another attempt's."""
        args = [token(attempt, worker), self.lease_ms]
        return bool(self._renew(keys=[keys.lease(job_id)], args=args))

    def holder(self, job_id: str) -> str | None:
        value = self.redis.get(keys.lease(job_id))
        return value.decode() if value else None

    def release(self, job_id: str, attempt: int, worker: str) -> None:
        if self.holder(job_id) == token(attempt, worker):
            self.redis.delete(keys.lease(job_id))
