"""Job records in Redis: the source of truth for a job's status, progress and outputs.

A record is a Redis hash. Every change goes through one Lua script that checks the
allowed previous status and, for a worker's writes, the attempt it holds (fencing: a
stale attempt can change nothing), keeps the active-status index sets, and bumps a
monotonic `seq`.

Statuses are `JobStatus` (shared/vocabulary.py); the edges a job may take between them
are `TRANSITIONS` below, and `transition` refuses any other.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

from shared import keys
from shared.jobspec import AnySpec
from shared.vocabulary import Hardware, JobStatus, Priority

S = JobStatus
# Every status change a job may make (a same-status update is always allowed).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.PENDING: frozenset({S.DISPATCHED, S.CANCELED}),
    # dispatched -> pending: its worker went away before starting it
    S.DISPATCHED: frozenset({S.RUNNING, S.PENDING, S.CANCELED}),
    # running -> pending: the attempt lost its lease (requeued); canceled: stopped mid-job
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELED, S.PENDING}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.PENDING}),  # retried
    S.CANCELED: frozenset({S.PENDING}),  # retried
}
# The events stream keeps about this many changes (a client that was away longer re-reads
# the records instead of resuming).
EVENTS_MAXLEN = 100_000
_JSON_FIELDS = ("spec", "outputs", "seeds", "hardware")
_INT_FIELDS = ("seq", "attempt", "attempts", "cancel_requested")
_FLOAT_FIELDS = (
    "progress",
    "created_at",
    "dispatched_at",
    "started_at",
    "finished_at",
    "eligible_at",
)

# KEYS: job hash, dispatched set, running set, events stream. ARGV: job id, attempt ("" =
# any), allowed previous statuses (comma separated; "*" = unchanged status), new status,
# field/value pairs. Every change is also appended to the events stream (scheduler/events.py).
_TRANSITION = f"""
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
local allowed, target = ARGV[3], ARGV[4]
if allowed == '*' then
  if current ~= target then return 0 end
elseif not string.find(',' .. allowed .. ',', ',' .. current .. ',', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], 'status', target)
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local sets = {{dispatched = KEYS[2], running = KEYS[3]}}
if current ~= target then
  if sets[current] then redis.call('SREM', sets[current], ARGV[1]) end
  if sets[target] then redis.call('SADD', sets[target], ARGV[1]) end
end
local rec = redis.call('HMGET', KEYS[1], 'owner', 'progress')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', {EVENTS_MAXLEN}, '*', 'job', ARGV[1],
  'status', target, 'progress', rec[2] or '0', 'owner', rec[1] or '', 'seq', seq)
return 1
"""


def _encode(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


class JobRecords:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._transition = redis.register_script(_TRANSITION)

    def create(
        self,
        job_id: str,
        spec: AnySpec,
        owner: str,
        priority: Priority,
        submitted_by: str = "",
        hardware: tuple[Hardware, ...] = tuple(Hardware),
    ) -> dict[str, Any]:
        """`submitted_by`: the account that submitted on the owner's behalf ("" = the owner);
        `hardware`: the classes the job may run on (the owner's quota)."""
        now = time.time()
        fields = {
            "id": job_id,
            "status": S.PENDING,
            "seq": 1,
            "progress": 0.0,
            "spec": spec.model_dump_json(),
            "seeds": json.dumps(spec.image_seeds()),
            "owner": owner,
            "submitted_by": submitted_by,
            "hardware": json.dumps(list(hardware)),
            "priority": priority,
            "queue": "",
            "attempt": 0,  # the current attempt's number: the fencing token
            "attempts": 0,  # attempts started since the job was (re)submitted
            "cancel_requested": 0,
            "created_at": now,
            "eligible_at": now,  # since when it may be dispatched (affinity waits count from it)
        }
        with self.redis.pipeline() as pipe:
            pipe.hset(keys.job(job_id), mapping=fields)
            pipe.zadd(keys.jobs_index(), {job_id: now})
            pipe.xadd(
                keys.events(),
                {"job": job_id, "status": S.PENDING, "progress": 0, "owner": owner, "seq": 1},
                maxlen=EVENTS_MAXLEN,
                approximate=True,
            )
            pipe.execute()
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(keys.job(job_id))
        if not raw:
            return None
        rec: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        for name in _JSON_FIELDS:
            if name in rec:
                rec[name] = json.loads(rec[name])
        for name in _INT_FIELDS:
            rec[name] = int(rec.get(name, 0))
        for name in _FLOAT_FIELDS:
            if name in rec:
                rec[name] = float(rec[name])
        rec["status"] = JobStatus(rec["status"])
        rec["priority"] = Priority(rec["priority"])
        return rec

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        allowed_from: tuple[JobStatus, ...],
        fence: int | None = None,
        **fields: Any,
    ) -> bool:
        """Move a job to `to` if its status is one of `allowed_from` (and, when `fence` is
        given, its current attempt is `fence`); set `fields` with it. False if refused.

        Asking for an edge that is not in TRANSITIONS is a programming error (ValueError)."""
        illegal = [s for s in allowed_from if to not in TRANSITIONS[s]]
        if illegal:
            raise ValueError(f"no transition {', '.join(illegal)} -> {to}")
        return self._run(job_id, to, ",".join(allowed_from), fence, fields)

    def update(
        self, job_id: str, status: JobStatus, fence: int | None = None, **fields: Any
    ) -> bool:
        """Set fields on a job that is (still) in `status` (and attempt `fence`, when given)."""
        return self._run(job_id, status, "*", fence, fields)

    def _run(
        self, job_id: str, to: JobStatus, allowed: str, fence: int | None, fields: dict[str, Any]
    ) -> bool:
        args: list[Any] = [job_id, "" if fence is None else fence, allowed, to]
        for name, value in fields.items():
            args += [name, _encode(value)]
        keys_ = [
            keys.job(job_id),
            keys.in_status(S.DISPATCHED),
            keys.in_status(S.RUNNING),
            keys.events(),
        ]
        return bool(self._transition(keys=keys_, args=args))

    def set_progress(self, job_id: str, attempt: int, progress: float) -> bool:
        """Record progress of a running attempt; false once the attempt is no longer current."""
        return self.update(job_id, S.RUNNING, attempt, progress=f"{progress:.4f}")

    def ids_in(self, status: JobStatus) -> list[str]:
        return sorted(i.decode() for i in self.redis.smembers(keys.in_status(status)))

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.redis.zrevrange(keys.jobs_index(), 0, limit - 1)
        records = (self.get(i.decode()) for i in ids)
        return [r for r in records if r is not None]
