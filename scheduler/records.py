"""Job records in Redis: the source of truth for a job's status, progress and outputs.

A record is a Redis hash. Every status change goes through one Lua script that
checks the allowed previous status and bumps a monotonic `seq`, so a late or
duplicate writer can never move a finished job backwards.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

from shared import keys
from shared.jobspec import AnySpec

STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
FINAL = ("succeeded", "failed", "canceled")
_JSON_FIELDS = ("spec", "outputs", "seeds")

# KEYS[1] job hash; ARGV[1] allowed previous statuses (comma separated) or "*" for
# "same status" (progress updates); ARGV[2] new status; ARGV[3..] field, value pairs.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local allowed = ARGV[1]
if allowed == '*' then
  if current ~= ARGV[2] then return 0 end
elseif not string.find(',' .. allowed .. ',', ',' .. current .. ',', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[1], 'seq', 1)
return 1
"""


def _encode(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


class JobRecords:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._transition = redis.register_script(_TRANSITION)

    def create(self, job_id: str, spec: AnySpec, queue: str) -> dict[str, Any]:
        now = time.time()
        fields = {
            "id": job_id,
            "status": "queued",
            "seq": 1,
            "progress": 0.0,
            "spec": spec.model_dump_json(),
            "seeds": json.dumps(spec.image_seeds()),
            "queue": queue,
            "created_at": now,
            "attempts": 0,
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(keys.job(job_id), mapping=fields)
            pipe.zadd(keys.jobs_index(), {job_id: now})
            pipe.execute()
        return self.get(job_id)  # type: ignore[return-value]

    def delete(self, job_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(keys.job(job_id))
            pipe.zrem(keys.jobs_index(), job_id)
            pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(keys.job(job_id))
        if not raw:
            return None
        rec: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        for name in _JSON_FIELDS:
            if name in rec:
                rec[name] = json.loads(rec[name])
        for name in ("seq", "attempts"):
            rec[name] = int(rec.get(name, 0))
        for name in ("progress", "created_at", "started_at", "finished_at"):
            if name in rec:
                rec[name] = float(rec[name])
        return rec

    def transition(self, job_id: str, to: str, allowed_from: tuple[str, ...], **fields) -> bool:
        """Move a job to `to` if its status is one of `allowed_from`; set fields with it."""
        args = [",".join(allowed_from), to]
        for name, value in fields.items():
            args += [name, _encode(value)]
        return bool(self._transition(keys=[keys.job(job_id)], args=args))

    def set_progress(self, job_id: str, progress: float) -> bool:
        """Record progress; only a running job moves."""
        return bool(
            self._transition(
                keys=[keys.job(job_id)], args=["*", "running", "progress", f"{progress:.4f}"]
            )
        )

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.redis.zrevrange(keys.jobs_index(), 0, limit - 1)
        records = (self.get(i.decode()) for i in ids)
        return [r for r in records if r is not None]

    def count(self) -> int:
        return int(self.redis.zcard(keys.jobs_index()))
