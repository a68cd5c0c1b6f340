"""The dispatcher: decides where and when each pending job runs, and reaps lost attempts.

One dispatcher runs per farm (`renderfarm scheduler`, holding a Redis lock). Each pass:
- reap (scheduler/reaper.py), every `reap_every_s`: a running job whose lease expired lost
  its worker → back to pending, or failed after `max_attempts` (a poison job); a
  dispatched job whose worker is gone, or whose task message was lost (its worker's queue
  stayed empty: a Redis failover) → pending.
- dispatch: pending jobs in fair order (priority, then the owner served longest ago,
  then age) go one at a time to an idle live worker that can run them, on that worker's
  own queue. A worker that already holds the job's model wins; a job waits at most
  `affinity_wait_s` for a busy warm worker before an idle one loads the model.
- tidy (scheduler/retention.py), every TIDY_EVERY_S, in a thread of its own (storage that
  is slow or hangs must hold up neither the passes nor the lock's renewal): deleted jobs'
  objects removed from storage; jobs finished more than `keep_jobs_days` ago deleted.
Celery carries the task (late ack, requeue if the worker is lost); the record decides.

What a pass costs does not grow with the queue: it reads the fleet in two round trips
(scheduler/fleetview.py: busy workers and owners' active jobs are counts the records' Lua
step keeps), each owner's first `PER_OWNER` pending jobs in two, the records it decides on
in batches, and sends its decisions together: the records' transitions and the pending
sets' updates in one pipeline, the Celery messages in one publish batch. The rounds of a
pass (one job per owner each) are played out on what the pass read; an owner's head is
re-read only after it was served. With no idle worker a pass stops at once; the reasons
shown on waiting jobs (`waiting`) are refreshed for every head job every `sweep_every_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from scheduler.affinity import Affinity
from scheduler.celery_app import RUN_JOB, make_celery
from scheduler.fleetview import FleetReader, FleetView, Worker, can_run, holds
from scheduler.pending import Candidate, PendingJobs
from scheduler.reaper import Reaper
from scheduler.records import JobRecords
from scheduler.retention import Retention
from scheduler.timing import model_of  # the model whose presence makes a worker warm
from shared import keys
from shared.config import Settings, redis_client
from shared.jobspec import AnySpec, load_spec
from shared.outage import Outage
from shared.storage import open_storage
from shared.vocabulary import JobStatus

__all__ = ["AFFINITY_WINDOW", "Dispatcher", "FleetView", "can_run", "holds"]

log = logging.getLogger(__name__)
AFFINITY_WINDOW = 16  # the jobs of the best priority the warm round looks at
MAX_OVERTAKEN = 16  # ... and how often one job may be overtaken there
WAITING_FOR_HOLDER = "waiting for a worker that holds the model"
PER_OWNER = 20  # the jobs of each owner a round looks at (its best pending ones)
READ_BATCH = 64  # records read in one round trip
READ_PER_OWNER = 2  # of them, at most this many of one owner (most are skipped: served)
SWEEP_BATCH = 500  # the same, while refreshing every head job's reason
SEND_BATCH = 200  # decisions sent in one pipeline and one publish batch
TIDY_EVERY_S = 2.0  # how often the retention step runs (scheduler/retention.py)
# A record's fields a pass decides on (the spec too, unless already parsed).
_FIELDS = (
    *("status", "priority", "owner", "attempt", "eligible_at", "waiting", "hardware"),
    "created_at",  # to requeue it, should its task not go
)


@dataclass(eq=False)
class _Job:
    """A pending job as the passes see it: its place in the order, and once read, its
    record's fields and its parsed spec. Kept while it stays in its owner's head
    (`Dispatcher._known`): what can change while a job waits is its priority (a new place:
    a new _Job) and the reason it waits (the dispatcher writes it); a canceled job leaves
    the head, so if it is retried it is read again."""

    cand: Candidate
    rec: dict[str, Any] | None = None
    read: bool = False
    spec: AnySpec | None = None
    overtaken: int = 0  # times the warm round let a later job go first

    @property
    def id(self) -> str:
        return self.cand.job_id

    @property
    def owner(self) -> str:
        return self.cand.owner

    @property
    def rank(self) -> int:
        return self.cand.rank


@dataclass
class _Sent:
    job: _Job
    worker: Worker
    warm: bool
    at: float
    evict: str = ""  # the model its load should evict first (`family:name`), if cold


@dataclass
class _Batch:
    """Decisions not yet written: dispatches, waiting reasons, stale pending entries."""

    sent: list[_Sent] = field(default_factory=list)
    waiting: list[tuple[str, str]] = field(default_factory=list)
    stale: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sent) + len(self.waiting) + len(self.stale)


class Dispatcher:
    affinity_window = AFFINITY_WINDOW  # 0: no warm round (the benchmark's plain routing)

    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.settings = settings
        self.redis = redis_client(settings)
        self.records = JobRecords(self.redis)
        self.pending = PendingJobs(self.redis)
        self.celery = celery or make_celery(settings)
        self.reaper = Reaper(self.redis, settings)
        self.retention = Retention(self.redis, open_storage(settings), settings)
        self._storage_outage = Outage(
            log, "storage unavailable; deleted jobs' objects wait", "storage reached again"
        )
        self.leading = False  # holds the dispatcher lock (renderfarm_scheduler_leader)
        # A heartbeat is up to an interval old anyway: re-read them at most 4 times per one.
        self.fleet_reader = FleetReader(self.redis, refresh_s=settings.heartbeat_s / 4)
        # A lost attempt is found within this of its lease expiring.
        self.reap_every_s = min(settings.lease_s, settings.heartbeat_s) / 4
        self.sweep_every_s = settings.heartbeat_s
        self._next_reap = self._next_sweep = float("-inf")
        self.stopping = threading.Event()  # set: run_forever and its tidy thread return
        self._counts_checked = False
        self._known: dict[str, _Job] = {}  # the jobs in the owners' heads, last pass
        self.affinity = Affinity(self.redis)  # the caches and costs beyond the heartbeats

    # -- the fleet --------------------------------------------------------------------------

    def fleet(self) -> FleetView:
        if not self._counts_checked:
            # Counts kept since this version: recount once (a farm upgraded with jobs active).
            self.records.rebuild_active()
            self._counts_checked = True
        return self.fleet_reader.view()

    # -- reaping ----------------------------------------------------------------------------

    def reap(self) -> int:
        """Requeue or fail jobs whose attempt was lost (at most every `reap_every_s`);
        returns how many were handled."""
        now = time.monotonic()
        if now < self._next_reap:
            return 0
        self._next_reap = now + self.reap_every_s
        return self.reaper.reap()

    def tidy_forever(self) -> None:
        """Retention (scheduler/retention.py) every TIDY_EVERY_S while this dispatcher leads
        (run_forever's thread): deleted jobs' objects removed from storage, expired jobs
        deleted. Storage down is logged, and dispatching goes on."""
        while not self.stopping.wait(TIDY_EVERY_S):
            if not self.leading:
                continue
            try:
                self.retention.step()
            except RedisError:
                pass  # the dispatch loop logs Redis' outage
            except Exception as exc:  # boto3's and the filesystem's errors alike
                self._storage_outage.failed(exc)
            else:
                self._storage_outage.over()

    # -- dispatching --------------------------------------------------------------------------

    def choose(
        self, rec: dict[str, Any], spec: AnySpec, view: FleetView
    ) -> tuple[Worker | None, str]:
        """The worker to send the job to now, or None and why it waits."""
        limit = view.at_limit(rec["owner"])
        if limit is not None:
            return None, f"waiting: {rec['owner']} has {limit} jobs running, its limit"
        groups = view.able_groups(spec, rec.get("hardware"))
        if not groups:
            # Draining workers are out of the view: an operator is told they may be why.
            drained = f"; {view.draining} live worker(s) draining" if view.draining else ""
            return None, (
                f"waiting for a compatible worker (hardware {spec.hardware}, "
                f"kind {spec.kind}, model {model_of(spec)!r}{drained})"
            )
        model = model_of(spec)
        warm_idle = view.first_idle_holder(groups, model)
        if warm_idle is not None:
            return warm_idle, ""
        # Cold: the idle worker whose cache loses least would load it, unless a busy
        # worker holding it is worth waiting for (scheduler/affinity.py).
        cold = view.cheapest_idle(groups, lambda w: self._loss(view, w)[0])
        waited = time.time() - rec["eligible_at"]
        if waited < self.settings.affinity_wait_s:
            held = view.busy_holders(groups, model)
            coming = view.busy_holders(groups, model, self.affinity.coming(model))
            if self.affinity.worth_waiting(view, held, coming, cold, spec):
                return None, WAITING_FOR_HOLDER
        if cold is None:
            return None, "waiting for a free worker"
        return cold, ""

    def _loss(self, view: FleetView, worker: Worker) -> tuple[float, Worker | None]:
        """What `worker`'s cache loses by loading a model, and the model it loses."""
        index = view._index()
        return self.affinity.victim(worker, index.copies, index.largest)

    def dispatch_one(self, rec: dict[str, Any], worker: Worker, warm: bool) -> bool:
        """Send the job to `worker` now (`warm`: it holds the job's model, an affinity hit)."""
        cand = Candidate(rec["id"], rec["owner"], rec["priority"].rank, 0, 0.0)
        sent = _Sent(_Job(cand, rec, True), worker, warm, time.time())
        self._noted(sent)
        return bool(self._flush(_Batch(sent=[sent])))

    def _noted(self, s: _Sent) -> None:
        """Affinity learns of the decision at once: later ones in the pass see it."""
        self.affinity.dispatched(s.worker, self._spec(s.job), s.warm, s.evict.partition(":")[2])

    def dispatch(self) -> int:
        """One pass: every job that can start now goes; returns how many."""
        view = self.fleet()
        now = time.monotonic()
        sweep = now >= self._next_sweep
        if sweep:
            self._next_sweep = now + self.sweep_every_s
        elif not view.has_idle():
            return 0
        self.affinity.refresh(view)
        return _Pass(self, view, sweep).run()

    # -- writing decisions ------------------------------------------------------------------

    def _flush(self, batch: _Batch) -> int:
        """Write the batch's decisions, then send the dispatched jobs' tasks; how many went."""
        if not len(batch):
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for s in batch.sent:
                rec = s.job.rec
                assert rec is not None
                self.records.transition_in(
                    pipe,
                    s.job.id,
                    JobStatus.DISPATCHED,
                    (JobStatus.PENDING,),
                    rec["attempt"],
                    attempt=rec["attempt"] + 1,
                    queue=keys.worker_queue(s.worker["name"]),
                    target=s.worker["name"],
                    worker_class=s.worker["hardware"],  # the census counts it there
                    warm=int(s.warm),
                    evict=s.evict,
                    dispatched_at=s.at,
                    waiting="",
                )
                self.pending.take_in(pipe, s.job.id, s.job.owner, s.at)
            for job_id, why in batch.waiting:
                self.records.update_in(pipe, job_id, JobStatus.PENDING, waiting=why)
            for job_id, owner in batch.stale:
                self.pending.take_in(pipe, job_id, owner, "")
            answers = pipe.execute()
        done = answers[0 : 2 * len(batch.sent) : 2]  # each dispatch: its transition, its take
        went = [s for s, ok in zip(batch.sent, done, strict=True) if ok]
        for s, ok in zip(batch.sent, done, strict=True):
            if not ok:  # not pending at that attempt any more: what was read is stale
                self._known.pop(s.job.id, None)
                self.affinity.forget(s.worker["name"])
        if went:
            self._send(went)
        batch.sent, batch.waiting, batch.stale = [], [], []
        return len(went)

    def _send(self, went: list[_Sent]) -> None:
        """The tasks, in one publish batch: Celery's two steps of `send_task` (its message,
        with the task-sent event if configured, then its publication), without the routing
        and result bookkeeping a task whose result is ignored does not need. The queues need
        no declaring: each is the anonymous exchange's route to its worker's queue, which
        the worker declares."""
        amqp = self.celery.amqp
        sent_event = self.celery.conf.task_send_sent_event
        try:
            with self.celery.producer_or_acquire() as producer, producer.batch():
                for s in went:
                    rec = s.job.rec
                    assert rec is not None
                    args = [s.job.id, rec["attempt"] + 1]
                    task_id = f"{s.job.id}.{args[1]}"
                    message = amqp.create_task_message(
                        task_id,
                        RUN_JOB,
                        args,
                        {},
                        create_sent_event=sent_event,
                        argsrepr=repr(args),
                        kwargsrepr="{}",
                    )
                    amqp.send_task_message(
                        producer,
                        RUN_JOB,
                        message,
                        queue=keys.worker_queue(s.worker["name"]),
                        priority=rec["priority"].celery,
                        declare=[],
                        retry=False,  # buffered: the batch's one write is what can fail
                    )
        except Exception as exc:
            # The records say dispatched but the tasks may not have gone: back to pending
            # (a task that did go finds a newer attempt and is dropped).
            log.warning("sending %d tasks failed; requeueing them", len(went), exc_info=True)
            for s in went:
                rec = s.job.rec
                assert rec is not None
                self.reaper.requeue(
                    {**rec, "id": s.job.id, "attempt": rec["attempt"] + 1},
                    (JobStatus.DISPATCHED,),
                    "its task could not be sent",
                )
            raise RedisError(f"sending tasks failed: {exc}") from exc

    def _spec(self, job: _Job) -> AnySpec:
        """The job's spec, parsed once while it waits."""
        if job.spec is None:
            assert job.rec is not None
            job.spec = load_spec(job.rec["spec"])
        return job.spec

    def _job(self, job_id: str, owner: str, rank: int, created_ms: int) -> _Job:
        """The pending job as the passes know it."""
        job = self._known.get(job_id)
        if job is None or job.rank != rank or job.cand.created_ms != created_ms:
            job = _Job(Candidate(job_id, owner, rank, created_ms, 0.0))
        return job

    # -- the loop ----------------------------------------------------------------------------

    def run_forever(self, poll_s: float = 0.25) -> None:
        name = f"dispatcher-{time.time_ns()}"
        outage = Outage(log, "Redis unavailable; retrying", "the dispatcher reaches Redis again")
        threading.Thread(target=self.tidy_forever, name="retention", daemon=True).start()
        while not self.stopping.is_set():
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
                outage.over()
            except (RedisError, OperationalError) as exc:  # OperationalError: Celery's send
                self.leading = False
                outage.failed(exc)
                time.sleep(1)


class _Pass:
    """One dispatch pass: rounds of at most one job per owner, in fair order, on what the
    pass read (each owner's head, re-read after the owner was served)."""

    def __init__(self, dispatcher: Dispatcher, view: FleetView, sweep: bool) -> None:
        self.d = dispatcher
        self.view = view
        self.sweep = sweep  # evaluate every head job, to refresh the reasons they wait
        self.batch = _Batch()
        self.served_at: dict[str, float] = {}
        self.heads: dict[str, list[_Job]] = {}
        self.more: set[str] = set()  # owners with more pending jobs than their head holds
        self.shrunk: set[str] = set()  # owners whose head lost jobs this round
        self.went = 0

    def run(self) -> int:
        """The rounds, until one sends nothing or no worker is left idle; how many went."""
        self._read_heads(None)
        while True:
            served: set[str] = set()
            cands = self._candidates()
            self._warm_round(cands, served)
            self._round(cands, served)
            self._flush()
            if not served or not self.view.has_idle():
                return self.went
            self.sweep = False  # one full round refreshed the reasons
            self._read_heads(sorted(self.shrunk & self.more))
            self.shrunk.clear()

    def _flush(self) -> None:
        self.went += self.d._flush(self.batch)

    def _read_heads(self, owners: list[str] | None) -> None:
        """The heads of `owners` (None: every owner's, and when each was served)."""
        served_at, heads = self.d.pending.heads(PER_OWNER, owners)
        if owners is None:
            self.served_at = served_at
        fresh = {
            owner: [self.d._job(job_id, owner, rank, created) for job_id, rank, created in head]
            for owner, head in heads.items()
        }
        known = self.d._known
        if owners is None:
            known.clear()  # what left the heads is forgotten
        for owner, jobs in fresh.items():
            if not jobs:
                self.d.pending.remove("", owner)  # no job left: the owner leaves the set
            for job in self.heads.get(owner, ()):
                known.pop(job.id, None)
            self.heads[owner] = jobs
            known.update((job.id, job) for job in jobs)
            if len(jobs) == PER_OWNER:
                self.more.add(owner)
            else:
                self.more.discard(owner)

    def _candidates(self) -> list[_Job]:
        jobs = [j for head in self.heads.values() for j in head]
        self.d.affinity.waiting = Counter(model_of(j.spec) for j in jobs if j.spec is not None)
        served_at = self.served_at
        return sorted(jobs, key=lambda j: (j.rank, served_at[j.owner], j.cand.created_ms))

    # -- the records ------------------------------------------------------------------------

    def _read(self, cands: list[_Job], i: int, served: set[str]) -> None:
        """Read cands[i]'s record, with the next ones the round will likely look at."""
        todo, per_owner = [cands[i]], {cands[i].owner: 1}
        size, owner_max = (SWEEP_BATCH, PER_OWNER) if self.sweep else (READ_BATCH, READ_PER_OWNER)
        for job in cands[i + 1 :]:
            if len(todo) >= size:
                break
            n = per_owner.get(job.owner, 0)
            if job.read or job.owner in served or n >= owner_max:
                continue
            per_owner[job.owner] = n + 1
            todo.append(job)
        parsed = [j for j in todo if j.spec is not None]
        fresh = [j for j in todo if j.spec is None]
        for group, names in ((parsed, _FIELDS), (fresh, (*_FIELDS, "spec"))):
            if not group:
                continue
            found = self.d.records.fields_of([j.id for j in group], names)
            for job, rec in zip(group, found, strict=True):
                if rec is not None:
                    rec["id"] = job.id
                job.rec, job.read = rec, True

    def _record(self, cands: list[_Job], i: int, served: set[str]) -> dict[str, Any] | None:
        if not cands[i].read:
            self._read(cands, i, served)
        return cands[i].rec

    # -- the rounds -------------------------------------------------------------------------

    def _decide(self, job: _Job, worker: Worker, warm: bool, served: set[str]) -> None:
        evict = ""
        if not warm:  # name what its load should evict: what the fleet loses least by
            lost = self.d._loss(self.view, worker)[1]
            evict = f"{lost['family']}:{lost['name']}" if lost else ""
        self.batch.sent.append(_Sent(job, worker, warm, time.time(), evict))
        self.d._noted(self.batch.sent[-1])
        self.view.occupy(worker["name"], job.owner)
        served.add(job.owner)
        self.served_at[job.owner] = self.batch.sent[-1].at
        self._drop(job)
        self.d._known.pop(job.id, None)
        if len(self.batch) >= SEND_BATCH:
            self._flush()

    def _drop(self, job: _Job) -> None:
        head = self.heads.get(job.owner)
        if head is not None and job in head:
            head.remove(job)
            self.shrunk.add(job.owner)

    def _warm_round(self, cands: list[_Job], served: set[str]) -> None:
        """Each idle worker first takes, among the next AFFINITY_WINDOW jobs of the best
        priority, the first whose model it already holds. Without this, a backlog makes
        every job take whichever worker is free, and affinity stops saving loads. Bounded:
        a job is overtaken at most MAX_OVERTAKEN times; then the window ends at it."""
        view = self.view
        if not cands or not view.has_idle():
            return
        window = [c for c in cands[: self.d.affinity_window] if c.rank == cands[0].rank]
        for k, job in enumerate(window):
            if job.overtaken >= MAX_OVERTAKEN:
                window = window[: k + 1]
                break
        models: dict[int, str] = {}
        for i, job in enumerate(window):
            rec = self._record(cands, i, served)
            if rec is not None and rec["status"] == JobStatus.PENDING:
                models[i] = model_of(self.d._spec(job))
        index = view._index()
        takers = {
            n
            for m in set(models.values())
            for n in index.holders.get(m, ())
            if n not in view.busy and n in view.workers
        }
        for name in sorted(takers, key=index.order.__getitem__):
            worker = view.workers[name]
            for i, job in enumerate(window):
                if i not in models or job.owner in served:
                    continue
                rec = job.rec
                assert rec is not None
                spec = self.d._spec(job)
                if (
                    view.at_limit(job.owner) is None
                    and index.group_of[name] in view.able_groups(spec, rec.get("hardware"))
                    and name in index.holders.get(models[i], ())
                ):
                    for ahead in window[:i]:
                        ahead.overtaken += 1
                    self._decide(job, worker, True, served)
                    break

    def _round(self, cands: list[_Job], served: set[str]) -> None:
        held_back: int | None = None  # the best rank skipped for fairness this round
        holding_on: dict[str, _Job] = {}  # model -> the first job waiting for its holder
        for i, job in enumerate(cands):
            if held_back is not None and job.rank > held_back:
                break  # a lower priority never overtakes a job held back only for fairness
            if job.owner in served:
                if held_back is None:
                    held_back = job.rank
                continue  # one per owner per round keeps owners interleaved
            if not self.sweep and not self.view.has_idle():
                break  # nothing more can start this pass
            rec = self._record(cands, i, served)
            if rec is None or rec["status"] != JobStatus.PENDING:
                if rec is None or rec["status"].final:
                    self.batch.stale.append((job.id, job.owner))
                self._drop(job)
                self.d._known.pop(job.id, None)
                continue
            spec = self.d._spec(job)
            worker, why = self.d.choose(rec, spec, self.view)
            if worker is None:
                if why == WAITING_FOR_HOLDER:
                    holding_on.setdefault(model_of(spec), job)
                if rec.get("waiting", "") != why:
                    self.batch.waiting.append((job.id, why))
                    rec["waiting"] = why
                continue
            warm = holds(worker, spec)
            ahead = None if warm else holding_on.pop(model_of(spec), None)
            if ahead is not None and self._fits(ahead, worker, served):
                # An earlier job waits for a holder of this model while this one would load
                # it cold (the holder's queue grew): the earlier one loads it instead.
                self._decide(ahead, worker, False, served)
                continue
            self._decide(job, worker, warm, served)

    def _fits(self, job: _Job, worker: Worker, served: set[str]) -> bool:
        """Whether `job` (read and pending) may go to `worker` now."""
        rec, view = job.rec, self.view
        if rec is None or job.owner in served or view.at_limit(job.owner) is not None:
            return False
        index = view._index()
        groups = view.able_groups(self.d._spec(job), rec.get("hardware"))
        return index.group_of[worker["name"]] in groups
