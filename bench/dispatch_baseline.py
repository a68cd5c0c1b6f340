"""The dispatcher as it was before the scale work (main at c5889cc), kept to measure against.

`MainDispatcher` is the farm's `Dispatcher` with main's fleet read, reaper and passes put
back, method for method: `fleet()` lists the live workers and checks each one's drain flag
one by one and reads every dispatched and running record to find the busy workers and the
owners' active jobs; every round of a pass re-reads every owner's head (one round trip per
owner) and each candidate's whole record (one round trip each) and walks every worker for
each; each dispatch is four round trips plus Celery's own; the reaper reads every active
record on every pass. Only the benchmark uses it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from scheduler.celery_app import RUN_JOB
from scheduler.dispatcher import Dispatcher
from scheduler.fleet import is_draining, live_workers
from scheduler.fleetview import FleetView, can_run, holds
from scheduler.pending import _RANK_SPAN, Candidate
from scheduler.quotas import running_limits
from scheduler.timing import model_of
from shared import keys
from shared.jobspec import AnySpec, load_spec
from shared.vocabulary import JobStatus

log = logging.getLogger(__name__)
AFFINITY_WINDOW = 4


class MainDispatcher(Dispatcher):
    def candidates(self, per_owner: int = 20) -> list[Candidate]:
        """main's `PendingJobs.candidates`: every owner's best pending jobs, in order."""
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

    def reap(self) -> int:
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
                    handled += 1
            elif self.reaper.requeue(rec, (JobStatus.RUNNING,), lost):
                handled += 1
        for job_id in self.records.ids_in(JobStatus.DISPATCHED):
            rec = self.records.get(job_id)
            if rec is None or rec["status"] != JobStatus.DISPATCHED or rec.get("target") in live:
                continue
            if self.reaper.requeue(
                rec, (JobStatus.DISPATCHED,), f"worker {rec.get('target')} went away"
            ):
                self.redis.delete(rec["queue"])
                handled += 1
        return handled

    def choose(
        self, rec: dict[str, Any], spec: AnySpec, view: FleetView
    ) -> tuple[dict[str, Any] | None, str]:
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
        return max(idle, key=lambda w: w["cache_budget"] - w["cache_bytes"]), ""

    def dispatch_one(self, rec: dict[str, Any], worker: dict[str, Any], warm: bool) -> bool:
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
            worker_class=worker["hardware"],
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
            cands = self.candidates()
            sent += self.warm_pass(cands, view, served)
            held_back: int | None = None
            for cand in cands:
                if held_back is not None and cand.rank > held_back:
                    break
                if cand.owner in served:
                    if held_back is None:
                        held_back = cand.rank
                    continue
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
