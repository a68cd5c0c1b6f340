"""The reaper: requeues (or fails) jobs whose attempt was lost.

- a running job whose lease expired lost its worker → back to pending, or failed after
  `max_attempts` started attempts (a poison job);
- a dispatched job whose worker's heartbeat is gone → back to pending (its queue deleted:
  nobody will consume it);
- a dispatched job whose task message was lost — its live worker's queue has stayed empty
  and the job not started for a while (a Redis failover kept the record's change and lost
  the message sent just after it, or the send failed) → back to pending. Requeued by
  mistake (the message was being taken just then), the old attempt's fence makes the
  worker drop it.

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
from shared.vocabulary import CELERY_PRIORITY_STEPS, JobStatus

log = logging.getLogger(__name__)

# Celery's Redis transport keeps a queue's messages of priority p > 0 in `<queue>\x06\x16p`.
_PRIORITY_LISTS = ", ".join(f"'\\6\\022{p}'" for p in CELERY_PRIORITY_STEPS if p)
# KEYS: running set, dispatched set. Returns the running jobs without a lease, the
# dispatched jobs whose target has no heartbeat, and the dispatched jobs (with their
# attempt) whose live target's queue holds no message.
_SUSPECTS = f"""
local lost, orphaned, unsent = {{}}, {{}}, {{}}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', '{keys.lease("")}' .. id) == 0 then table.insert(lost, id) end
end
local suffixes = {{'', {_PRIORITY_LISTS}}}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local f = redis.call('HMGET', '{keys.job("")}' .. id, 'target', 'queue', 'attempt')
  if redis.call('EXISTS', '{keys.worker("")}' .. (f[1] or '')) == 0 then
    table.insert(orphaned, id)
  else
    local waiting = 0
    for _, suffix in ipairs(suffixes) do
      waiting = waiting + redis.call('LLEN', (f[2] or '') .. suffix)
    end
    if waiting == 0 then table.insert(unsent, id .. ' ' .. (f[3] or '')) end
  end
end
return {{lost, orphaned, unsent}}
"""


class Reaper:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.records = JobRecords(redis)
        self.pending = PendingJobs(redis)
        self._suspects = redis.register_script(_SUSPECTS)
        # Dispatched attempts (job, attempt) whose worker's queue was seen empty, since when.
        self._unsent: dict[tuple[str, int], float] = {}

    def reap(self) -> int:
        """Requeue or fail jobs whose attempt was lost; returns how many were handled."""
        lost_raw, orphaned_raw, unsent_raw = self._suspects(
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
        return handled + self._reap_unsent(unsent_raw)

    def _reap_unsent(self, unsent_raw: list[bytes]) -> int:
        """Requeue dispatched attempts whose worker's queue has stayed empty, the job not
        started, for longer than a lease (or three heartbeats)."""
        now, handled = time.monotonic(), 0
        grace = max(self.settings.lease_s, 3 * self.settings.heartbeat_s)
        empty = set()
        for item in unsent_raw:
            job_id, _, attempt = item.decode().partition(" ")
            empty.add((job_id, int(attempt or 0)))
        self._unsent = {d: self._unsent.get(d, now) for d in empty}
        for (job_id, attempt), since in sorted(self._unsent.items()):
            if now - since <= grace:
                continue
            rec = self.records.get(job_id)
            if rec is None or rec["status"] != JobStatus.DISPATCHED or rec["attempt"] != attempt:
                continue
            why = "its task message was lost (a Redis failover?)"
            if self.requeue(rec, (JobStatus.DISPATCHED,), why):
                del self._unsent[(job_id, attempt)]
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
