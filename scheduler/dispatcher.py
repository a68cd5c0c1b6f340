"""The dispatcher: decides where and when each pending job runs, and reaps lost attempts.

One dispatcher runs per farm (`renderfarm scheduler`, holding a Redis lock). Each pass:
- reap: a running job whose lease expired lost its worker → back to pending, or failed
  after `max_attempts` (a poison job); a dispatched job whose worker is gone, or whose
  task message was lost (its worker's queue stayed empty: a Redis failover) → pending.
- dispatch: pending jobs in fair order (priority, then the owner served longest ago,
  then age) go one at a time to an idle live worker that can run them, on that worker's
  own queue. A worker that already holds the job's model wins; a job waits at most
  `affinity_wait_s` for a busy warm worker before an idle one loads the model.
Celery carries the task (late ack, requeue if the worker is lost); the record decides.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from scheduler.celery_app import RUN_JOB, make_celery
from scheduler.fleet import is_draining, live_workers
from scheduler.pending import Candidate, PendingJobs
from scheduler.quotas import running_limits
from scheduler.records import JobRecords
from scheduler.timing import model_of  # the model whose presence makes a worker warm
from shared import keys
from shared.config import Settings, redis_client
from shared.jobspec import AnySpec, load_spec
from shared.vocabulary import AUTO, CELERY_PRIORITY_STEPS, JobStatus

log = logging.getLogger(__name__)
AFFINITY_WINDOW = 4


def can_run(worker: dict[str, Any], spec: AnySpec, allowed: list[str] | None = None) -> bool:
    """Whether `worker` can run the job; `allowed`: the classes the owner's quota permits."""
    if spec.hardware != AUTO and worker["hardware"] != spec.hardware:
        return False
    if allowed is not None and worker["hardware"] not in allowed:
        return False
    if spec.kind not in worker.get("kinds", ()):
        return False
    store = worker.get("store", {})
    return all(name in store.get(family, ()) for _, family, name in spec.required_models())


def holds(worker: dict[str, Any], spec: AnySpec) -> bool:
    name = model_of(spec)
    return any(m["name"] == name for m in worker.get("models", ()))


@dataclass
class FleetView:
    workers: dict[str, dict[str, Any]]
    busy: set[str] = field(default_factory=set)
    # Dispatched or running jobs per owner, and how many each may have (its quota).
    active: Counter[str] = field(default_factory=Counter)
    limits: dict[str, int] = field(default_factory=dict)

    def at_limit(self, owner: str) -> int | None:
        """The owner's running limit when it has reached it, else None."""
        limit = self.limits.get(owner)
        return limit if limit is not None and self.active[owner] >= limit else None

    def idle(self) -> list[dict[str, Any]]:
        return [w for n, w in self.workers.items() if n not in self.busy]


class Dispatcher:
    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.settings = settings
        self.redis = redis_client(settings)
        self.records = JobRecords(self.redis)
        self.pending = PendingJobs(self.redis)
        self.celery = celery or make_celery(settings)
        self.leading = False  # holds the dispatcher lock (renderfarm_scheduler_leader)
        # Dispatched attempts (job, attempt) whose worker's queue was seen empty, since when
        # (`_task_lost`).
        self._unsent: dict[tuple[str, int], float] = {}

    # -- the fleet --------------------------------------------------------------------------

    def fleet(self) -> FleetView:
        workers = {
            w["name"]: w for w in live_workers(self.redis) if not is_draining(self.redis, w["name"])
        }
        view = FleetView(workers, limits=running_limits(self.redis))
        for status, name_field in ((JobStatus.RUNNING, "worker"), (JobStatus.DISPATCHED, "target")):
            for job_id in self.records.ids_in(status):
                rec = self.records.get(job_id)
                if rec and rec.get(name_field):
                    view.busy.add(rec[name_field])
                    view.active[rec["owner"]] += 1
        return view

    # -- reaping ----------------------------------------------------------------------------

    def reap(self) -> int:
        """Requeue or fail jobs whose attempt was lost; returns how many were handled."""
        handled = 0
        live = {w["name"] for w in live_workers(self.redis)}
        for job_id in self.records.ids_in(JobStatus.RUNNING):
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
            elif self._requeue(rec, (JobStatus.RUNNING,), lost):
                handled += 1
        seen: set[tuple[str, int]] = set()  # the dispatched attempts this pass
        for job_id in self.records.ids_in(JobStatus.DISPATCHED):
            rec = self.records.get(job_id)
            if rec is None or rec["status"] != JobStatus.DISPATCHED:
                continue
            seen.add((job_id, rec["attempt"]))
            if rec.get("target") not in live:
                why = f"worker {rec.get('target')} went away"
                if self._requeue(rec, (JobStatus.DISPATCHED,), why):
                    self.redis.delete(rec["queue"])  # its own queue: nobody will consume it
                    handled += 1
            elif self._task_lost(rec) and self._requeue(
                rec, (JobStatus.DISPATCHED,), "its task message was lost (a Redis failover?)"
            ):
                handled += 1
        for gone in set(self._unsent) - seen:
            del self._unsent[gone]
        return handled

    def _task_lost(self, rec: dict[str, Any]) -> bool:
        """Whether a dispatched job's task message is gone: its live worker's queue has been
        empty, and the job not started, for a while. A failover can keep the record's
        `dispatched` and lose the message sent just after it (asynchronous replication), or
        the send can fail; nothing would ever run the job. Requeued by mistake (the message
        was being taken just then), the old attempt's fence makes the worker drop it."""
        queues = [rec["queue"], *(f"{rec['queue']}\x06\x16{p}" for p in CELERY_PRIORITY_STEPS if p)]
        with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
            waiting = any(pipe.execute())
        dispatch = (rec["id"], rec["attempt"])
        if waiting:
            self._unsent.pop(dispatch, None)
            return False
        since = self._unsent.setdefault(dispatch, time.monotonic())
        return time.monotonic() - since > max(self.settings.lease_s, 3 * self.settings.heartbeat_s)

    def _requeue(self, rec: dict[str, Any], allowed: tuple[JobStatus, ...], why: str) -> bool:
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

    # -- dispatching --------------------------------------------------------------------------

    def choose(
        self, rec: dict[str, Any], spec: AnySpec, view: FleetView
    ) -> tuple[dict[str, Any] | None, str]:
        """The worker to send the job to now, or None and why it waits."""
        limit = view.at_limit(rec["owner"])
        if limit is not None:
            return None, f"waiting: {rec['owner']} has {limit} jobs running, its limit"
        able = [w for w in view.workers.values() if can_run(w, spec, rec.get("hardware"))]
        if not able:
            return None, (
                f"waiting for a compatible worker (hardware {spec.hardware}, "
                f"kind {spec.kind}, model {model_of(spec)!r})"
            )
        idle = [w for w in able if w["name"] not in view.busy]
        warm_idle = [w for w in idle if holds(w, spec)]
        if warm_idle:
            return warm_idle[0], ""
        warm_busy = [w for w in able if w["name"] in view.busy and holds(w, spec)]
        waited = time.time() - rec["eligible_at"]
        if warm_busy and waited < self.settings.affinity_wait_s:
            return None, "waiting for a worker that holds the model"
        if not idle:
            return None, "waiting for a free worker"
        # Cold start: the idle worker with the most free cache room loads it.
        return max(idle, key=lambda w: w["cache_budget"] - w["cache_bytes"]), ""

    def dispatch_one(self, rec: dict[str, Any], worker: dict[str, Any], warm: bool) -> bool:
        """Send the job to `worker` (`warm`: it holds the job's model, an affinity hit)."""
        job_id, attempt = rec["id"], rec["attempt"] + 1
        queue = keys.worker_queue(worker["name"])
        if not self.records.transition(
            job_id,
            JobStatus.DISPATCHED,
            (JobStatus.PENDING,),
            rec["attempt"],
            attempt=attempt,
            queue=queue,
            target=worker["name"],
            worker_class=worker["hardware"],  # the census counts it there (scheduler/census.py)
            warm=int(warm),
            dispatched_at=time.time(),
            waiting="",
        ):
            return False
        self.pending.remove(job_id, rec["owner"])
        self.pending.served(rec["owner"])
        self.celery.send_task(
            RUN_JOB,
            args=[job_id, attempt],
            queue=queue,
            task_id=f"{job_id}.{attempt}",
            priority=rec["priority"].celery,
        )
        return True

    def warm_pass(self, cands: list[Candidate], view: FleetView, served: set[str]) -> int:
        """Each idle worker first takes, among the next few jobs of the best priority, the
        first whose model it already holds. Without this, a backlog makes every job take
        whichever worker is free, and affinity stops saving loads. Bounded: a job can be
        passed over only by the AFFINITY_WINDOW - 1 jobs behind it."""
        if not cands:
            return 0
        window = [c for c in cands[:AFFINITY_WINDOW] if c.rank == cands[0].rank]
        sent = 0
        for worker in view.idle():
            for cand in window:
                if cand.owner in served:
                    continue
                rec = self.records.get(cand.job_id)
                if rec is None or rec["status"] != JobStatus.PENDING:
                    continue
                spec = load_spec(rec["spec"])
                if (
                    view.at_limit(cand.owner) is None
                    and can_run(worker, spec, rec.get("hardware"))
                    and holds(worker, spec)
                    and self.dispatch_one(rec, worker, warm=True)
                ):
                    view.busy.add(worker["name"])
                    view.active[cand.owner] += 1
                    served.add(cand.owner)
                    sent += 1
                    break
        return sent

    def dispatch(self) -> int:
        view = self.fleet()
        sent = 0
        while True:
            served: set[str] = set()
            cands = self.pending.candidates()
            sent += self.warm_pass(cands, view, served)
            held_back: int | None = None  # the best rank skipped for fairness this round
            for cand in cands:
                if held_back is not None and cand.rank > held_back:
                    break  # a lower priority never overtakes a job held back only for fairness
                if cand.owner in served:
                    if held_back is None:
                        held_back = cand.rank
                    continue  # one per owner per round keeps owners interleaved
                rec = self.records.get(cand.job_id)
                if rec is None or rec["status"] != JobStatus.PENDING:
                    if rec is None or rec["status"].final:
                        self.pending.remove(cand.job_id, cand.owner)
                    continue
                spec = load_spec(rec["spec"])
                worker, why = self.choose(rec, spec, view)
                if worker is None:
                    if rec.get("waiting") != why:
                        self.records.update(cand.job_id, JobStatus.PENDING, waiting=why)
                    continue
                if self.dispatch_one(rec, worker, warm=holds(worker, spec)):
                    view.busy.add(worker["name"])
                    view.active[cand.owner] += 1
                    served.add(cand.owner)
                    sent += 1
            if not served:
                return sent

    # -- the loop ----------------------------------------------------------------------------

    def run_forever(self, poll_s: float = 0.25) -> None:
        name = f"dispatcher-{time.time_ns()}"
        while True:
            try:
                # One dispatcher per farm: hold the lock, or stand by for it.
                self.leading = bool(
                    self.redis.set(keys.dispatcher_lock(), name, px=5000, nx=True)
                    or self.redis.get(keys.dispatcher_lock()) == name.encode()
                )
                if self.leading:
                    self.redis.pexpire(keys.dispatcher_lock(), 5000)
                    self.reap()
                    self.dispatch()
                if self.redis.brpop([keys.wake()], timeout=poll_s):
                    self.redis.delete(keys.wake())  # one pass serves every wake-up so far
            except (RedisError, OperationalError):  # OperationalError: Celery's send
                self.leading = False
                log.warning("Redis unavailable; retrying", exc_info=True)
                time.sleep(1)
