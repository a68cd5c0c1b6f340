"""Simulated workers for the dispatch benchmark: heartbeats and Celery consumers, no torch.

Each simulated worker does to Redis what a real one does (worker/heartbeat.py,
worker/runner.py):
- its heartbeat, every `heartbeat_s` (the fleet spread over the interval), TTL three
  intervals: a document with the real one's fields (name, hardware, kinds, store, models,
  cache budget and bytes, device, versions, ...), its name in `keys.workers_index()`;
- it takes its task from its Celery queue's lists as kombu's Redis transport lays them out
  (`worker.<name>`, then `worker.<name>\x06\x163` and `...\x166` for the lower
  priorities; the best first), the body decoded as Celery's JSON protocol 2 (base64 of
  `[args, kwargs, embed]`, args = [job id, attempt]);
- reads the record (HGETALL) and drops a stale task (not `dispatched` at that attempt);
  takes the lease and moves the record dispatched → running with its name and class (the
  records' Lua step, `scheduler.records.TRANSITION_SCRIPT`); after `job_s` moves it
  running → succeeded (fenced by the attempt), releases the lease and pushes `keys.wake()`.
  The job's model is "loaded" into an LRU of `cache_models` entries its next heartbeat shows.

One process drives the whole fleet in one loop, each step pipelined over the workers it
concerns. A real worker blocks in BRPOP on its own connection; a thousand of those in one
Python process cannot keep up on a small machine, so instead the loop listens to Celery's
task-sent events (the PUBLISH Flower listens to; each names the queue the task went to)
and pops that worker's queue, and once a second looks in every idle worker's queue (an
event missed). Not simulated: kombu's unacked-message bookkeeping (a hash and a sorted set
per delivery), the worker's task events, lease renewals (the lease outlasts the job).

The figures it writes (`--out`, JSON): each delivery (job, worker, attempt, its record's
eligible_at and dispatched_at, when it was popped, when that worker had last become free)
and the stale deliveries it dropped.
"""

from __future__ import annotations

import base64
import heapq
import json
import os
import random
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis

from scheduler.records import TRANSITION_SCRIPT, decode, transition_call
from shared import keys
from shared.modelstore import FAMILIES
from shared.vocabulary import CELERY_PRIORITY_STEPS, JobKind, JobStatus

SEP = "\x06\x16"  # kombu's Redis transport: `<queue><SEP><priority>` for priorities above 0
MODEL_BYTES = 2 * 2**30  # what one loaded checkpoint takes in a simulated cache


def queue_lists(name: str) -> list[str]:
    """A worker's Celery queue as Redis lists, in the order kombu BRPOPs them (best first)."""
    queue = keys.worker_queue(name)
    return [queue if p == 0 else f"{queue}{SEP}{p}" for p in CELERY_PRIORITY_STEPS]


def worker_names(count: int, gpu_share: float) -> list[tuple[str, str]]:
    """(name, hardware class) of `count` simulated workers, `gpu_share` of them GPU ones."""
    gpus = round(count * gpu_share)
    return [
        (f"sim-{'gpu' if i < gpus else 'cpu'}-{i:04d}", "gpu" if i < gpus else "cpu")
        for i in range(count)
    ]


@dataclass
class SimWorker:
    name: str
    hardware: str
    models: list[str]  # every model in its store
    cache_models: int
    held: OrderedDict[str, None] = field(default_factory=OrderedDict)  # LRU, oldest first
    current: str | None = None
    free_since: float | None = None
    done: int = 0
    started_at: float = field(default_factory=time.time)

    def heartbeat(self) -> dict[str, Any]:
        budget = self.cache_models * MODEL_BYTES
        return {
            "name": self.name,
            "hardware": self.hardware,
            "host": "sim-host",
            "pid": os.getpid(),
            "device": "cuda:0" if self.hardware == "gpu" else "cpu",
            "device_name": "Simulated GPU" if self.hardware == "gpu" else "Simulated CPU",
            "memory_total": 64 * 2**30,
            "memory_used": 8 * 2**30,
            "process_rss": 2 * 2**30,
            "cache_budget": budget,
            "cache_bytes": len(self.held) * MODEL_BYTES,
            "models": [
                {
                    "name": m,
                    "family": "checkpoint",
                    "path": f"/models/checkpoints/{m}",
                    "size_bytes": MODEL_BYTES,
                    "locks": 1 if m == self.current else 0,
                    "tier": "ram",
                }
                for m in self.held
            ],
            "compiled": {"variants": 0, "bytes": 0},
            "kinds": [k.value for k in JobKind],
            "store": {f: (self.models if f == "checkpoint" else []) for f in FAMILIES},
            "draining": False,
            "cache": {"name": "ram", "hits": self.done, "loads": len(self.held)},
            "current_job": self.current,
            "stalled_job": None,
            "jobs_done": self.done,
            "jobs_failed": 0,
            "versions": {"renderfarm": "sim"},
            "started_at": self.started_at,
            "seen_at": time.time(),
        }

    def load(self, model: str) -> None:
        self.held.pop(model, None)
        self.held[model] = None
        while len(self.held) > self.cache_models:
            self.held.popitem(last=False)


# KEYS: one worker's queue lists, best priority first. The first message there, or false.
_POP_FIRST = """
for _, key in ipairs(KEYS) do
  local message = redis.call('RPOP', key)
  if message then return message end
end
return false
"""


class Fleet:
    """The simulated workers, driven by one loop (a thread per worker would not keep up)."""

    def __init__(self, url: str, workers: list[SimWorker], job_s: float, heartbeat_s: float):
        self.workers = {w.name: w for w in workers}
        self.job_s = job_s
        self.heartbeat_s = heartbeat_s
        self.redis = Redis.from_url(url)
        self.transition = self.redis.register_script(TRANSITION_SCRIPT)
        self.pop_first = self.redis.register_script(_POP_FIRST)
        self.idle = set(self.workers)
        self.notified: set[str] = set()  # idle workers whose queue may hold a task
        self.running: list[tuple[float, int, str, str, int, float]] = []  # a heap by end time
        self._seq = 0
        self.deliveries: list[list[Any]] = []
        self.stale = 0
        self.stopping = False
        self.offsets = {name: random.random() * heartbeat_s for name in self.workers}
        self._beat_at = time.monotonic()

    # -- heartbeats -------------------------------------------------------------------------

    def beat(self, names: list[str]) -> None:
        ttl_ms = int(self.heartbeat_s * 3 * 1000)
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                w = self.workers[name]
                pipe.set(keys.worker(name), json.dumps(w.heartbeat()), px=ttl_ms)
                pipe.sadd(keys.workers_index(), name)
            pipe.execute()

    def beat_due(self) -> None:
        """Each worker beats once per interval, the fleet spread over it."""
        last, now, hb = self._beat_at, time.monotonic(), self.heartbeat_s
        due = [n for n, off in self.offsets.items() if (last - off) // hb != (now - off) // hb]
        self._beat_at = now
        if due:
            self.beat(due)

    # -- taking tasks -----------------------------------------------------------------------

    def take(self, names: list[str]) -> None:
        """Pop a task for each of these idle workers; start the ones still current."""
        with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                self.pop_first(keys=queue_lists(name), client=pipe)
            messages = pipe.execute()
        popped_at = time.time()
        got = [(n, m) for n, m in zip(names, messages, strict=True) if m]
        self.notified.difference_update(names)
        if not got:
            return
        tasks = []
        for name, message in got:
            body = json.loads(base64.b64decode(json.loads(message)["body"]))
            job_id, attempt = body[0]
            tasks.append((name, job_id, attempt))
        with self.redis.pipeline(transaction=False) as pipe:
            for _, job_id, _ in tasks:
                pipe.hgetall(keys.job(job_id))
            records = [decode(raw) for raw in pipe.execute()]
        started = time.time()
        starts = []
        with self.redis.pipeline(transaction=False) as pipe:
            for (name, job_id, attempt), rec in zip(tasks, records, strict=True):
                current = rec is not None and rec["attempt"] == attempt
                if not current or rec["status"] != JobStatus.DISPATCHED:
                    self.stale += 1
                    continue
                w = self.workers[name]
                self.deliveries.append(
                    [job_id, name, attempt, rec.get("eligible_at"), rec.get("dispatched_at"),
                     popped_at, w.free_since]
                )  # fmt: skip
                k, a = transition_call(
                    job_id,
                    JobStatus.RUNNING,
                    (JobStatus.DISPATCHED,),
                    attempt,
                    worker=name,
                    ran_on=w.hardware,
                    started_at=started,
                    attempts=rec["attempts"] + 1,
                    note="",
                )
                pipe.set(keys.lease(job_id), f"{attempt}:{name}", px=60_000)
                self.transition(keys=k, args=a, client=pipe)
                starts.append((w, job_id, attempt, rec.get("model") or ""))
            answers = pipe.execute() if starts else []
        for (w, job_id, attempt, model), ok in zip(starts, answers[1::2], strict=True):
            if not ok:
                self.redis.delete(keys.lease(job_id))
                continue
            w.current = job_id
            w.load(model)
            self.idle.discard(w.name)
            self._seq += 1
            heapq.heappush(
                self.running, (time.monotonic() + self.job_s, self._seq, w.name, job_id, attempt,
                               started)
            )  # fmt: skip

    def finish_due(self) -> None:
        """Every job whose time is up succeeds; its worker is free."""
        now = time.monotonic()
        done = []
        while self.running and self.running[0][0] <= now:
            done.append(heapq.heappop(self.running))
        if not done:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for _, _, _, job_id, attempt, started in done:
                k, a = transition_call(
                    job_id,
                    JobStatus.SUCCEEDED,
                    (JobStatus.RUNNING,),
                    attempt,
                    finished_at=time.time(),
                    outputs=[],
                    progress=1.0,
                    render_s=f"{time.time() - started:.3f}",
                    load_s="0.000",
                    upload_s="0.000",
                )
                self.transition(keys=k, args=a, client=pipe)
                pipe.delete(keys.lease(job_id))
                pipe.lpush(keys.wake(), 1)  # a worker is free: dispatch now
            pipe.execute()
        freed = time.time()
        for _, _, name, _, _, _ in done:
            w = self.workers[name]
            w.current, w.done, w.free_since = None, w.done + 1, freed
            self.idle.add(name)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, ready: Path) -> None:
        """Wake on Celery's task-sent events (each names the queue it went to), take the
        tasks, finish jobs when due, beat; every second, look in every idle worker's queue
        (an event missed, or sent before we listened)."""
        events = self.redis.pubsub(ignore_subscribe_messages=True)
        events.psubscribe("/*.celeryev/task.sent")
        self.beat(list(self.workers))
        for w in self.workers.values():
            w.free_since = time.time()
        ready.write_text("ready")
        next_poll = time.monotonic()
        queues = {keys.worker_queue(n): n for n in self.workers}
        while not self.stopping:
            now = time.monotonic()
            wait = min(0.05, next_poll - now)
            if self.running:
                wait = min(wait, self.running[0][0] - now)
            message = events.get_message(timeout=max(wait, 0.0))
            while message is not None:
                event = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
                name = queues.get(event.get("queue") or event.get("routing_key") or "")
                if name is not None:
                    self.notified.add(name)
                message = events.get_message(timeout=0.0)
            if time.monotonic() >= next_poll:
                self.notified |= self.idle
                next_poll = time.monotonic() + 1.0
            ready_now = sorted(self.notified & self.idle)
            if ready_now:
                self.take(ready_now)
            self.finish_due()
            self.beat_due()
        events.close()


def run(args: dict[str, Any]) -> None:
    """The `--role workers` process: `args` as the coordinator wrote them (JSON)."""
    names = worker_names(args["workers"], args["gpu_share"])
    workers = [SimWorker(n, hw, args["models"], args["cache_models"]) for n, hw in names]
    fleet = Fleet(args["redis_url"], workers, args["job_s"], args["heartbeat_s"])

    def stop(*_: Any) -> None:
        fleet.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    profile = None
    if args.get("profile"):
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    try:
        fleet.run(Path(args["ready"]))
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(args["profile"])
        found = {"deliveries": fleet.deliveries, "stale": fleet.stale, "errors": []}
        Path(args["out"]).write_text(json.dumps(found))
