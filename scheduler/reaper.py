"""The reaper: requeues (or fails) jobs whose attempt was lost.

- a running job whose lease expired lost its worker → back to pending, or failed after
  `max_attempts` started attempts (a poison job);
- a dispatched job whose worker's heartbeat is gone → back to pending (its queue deleted:
  nobody will consume it).

One Lua step finds the suspects among the active jobs (a lease or a heartbeat missing), so
a reap costs one round trip however many jobs run, plus one per suspect; the dispatcher
runs it every few seconds' fraction (a lease lasts seconds), not on every pass.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis import Redis

from scheduler.pending import PendingJobs
from scheduler.records import JobRecords
from shared import keys
from shared.config import Settings
from shared.vocabulary import JobStatus

log = logging.getLogger(__name__)

# KEYS: running set, dispatched set. Returns the running jobs without a lease and the
# dispatched jobs whose target has no heartbeat.
_SUSPECTS = f"""
local lost, orphaned = {{}}, {{}}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', '{keys.lease("")}' .. id) == 0 then table.insert(lost, id) end
end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local target = redis.call('HGET', '{keys.job("")}' .. id, 'target') or ''
  if redis.call('EXISTS', '{keys.worker("")}' .. target) == 0 then
    table.insert(orphaned, id)
  end
end
return {{lost, orphaned}}
"""


class Reaper:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.records = JobRecords(redis)
        self.pending = PendingJobs(redis)
        self._suspects = redis.register_script(_SUSPECTS)

    def reap(self) -> int:
        """Requeue or fail jobs whose attempt was lost; returns how many were handled."""
        lost_raw, orphaned_raw = self._suspects(
            keys=[keys.in_status(JobStatus.RUNNING), keys.in_status(JobStatus.DISPATCHED)]
        )
        handled = 0
        for job_id in sorted(i.decode() for i in lost_raw):
            rec = self.records.get(job_id)
            if (
                rec is None
                or rec["status"] != JobStatus.RUNNING
                or self.redis.exists(keys.lease(job_id))
            ):
                continue
            lost = f"attempt {rec['attempt']} lost its worker {rec.get('worker', '?')}"
            if rec["attempts"] >= self.settings.max_attempts:
                reason = f"{lost}; failed after {rec['attempts']} attempts (poison job?)"
                if self.records.transition(
                    job_id,
                    JobStatus.FAILED,
                    (JobStatus.RUNNING,),
                    rec["attempt"],
                    error=reason,
                    finished_at=time.time(),
                ):
                    log.warning("job %s: %s", job_id, reason)
                    handled += 1
            elif self.requeue(rec, (JobStatus.RUNNING,), lost):
                handled += 1
        for job_id in sorted(i.decode() for i in orphaned_raw):
            rec = self.records.get(job_id)
            if (
                rec is None
                or rec["status"] != JobStatus.DISPATCHED
                or self.redis.exists(keys.worker(rec.get("target", "")))
            ):
                continue
            if self.requeue(rec, (JobStatus.DISPATCHED,), f"worker {rec.get('target')} went away"):
                self.redis.delete(rec["queue"])  # its own queue: nobody will consume it
                handled += 1
        return handled

    def requeue(self, rec: dict[str, Any], allowed: tuple[JobStatus, ...], why: str) -> bool:
        ok = self.records.transition(
            rec["id"],
            JobStatus.PENDING,
            allowed,
            rec["attempt"],
            note=why,
            progress=0.0,
            queue="",
            target="",
            eligible_at=time.time(),
        )
        if ok:
            log.warning("job %s requeued: %s", rec["id"], why)
            self.pending.add(rec["id"], rec["owner"], rec["priority"], rec["created_at"])
        return ok
