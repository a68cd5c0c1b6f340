"""The dispatcher's picture of the fleet: who is live, who is busy, who can run what.

Read for every pass in a fixed number of round trips, whatever the queue's length:
- the heartbeats (`scheduler/fleet.py`), re-read at most every quarter heartbeat interval
  (a heartbeat is itself that old) and parsed only when one changed; between those, the
  heartbeats of workers whose model cache changed (`keys.fleet_changed`: they beat at
  once), so routing by what a worker holds is never a whole interval late;
- every pass: the busy workers and each owner's active jobs (counts the records' Lua step
  keeps, `keys.worker_jobs` and `keys.owner_jobs`), the running limits, and whether any
  worker is draining (one EXISTS over their drain keys).

`FleetView` answers the dispatcher's questions from indexes instead of walking the
workers: the workers grouped by what they can run (hardware, kinds, store), who holds which
model, and the idle workers of each group, the one whose cache loses least first.
"""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from scheduler.fleet import draining as draining_of
from scheduler.timing import model_of
from shared import keys
from shared.jobspec import AnySpec
from shared.vocabulary import AUTO

Worker = dict[str, Any]
CHANGED_PER_PASS = 1000  # changed heartbeats a pass re-reads at most (the rest: next pass)


def can_run(worker: Worker, spec: AnySpec, allowed: list[str] | None = None) -> bool:
    """Whether `worker` can run the job; `allowed`: the classes the owner's quota permits."""
    if spec.hardware != AUTO and worker["hardware"] != spec.hardware:
        return False
    if allowed is not None and worker["hardware"] not in allowed:
        return False
    if spec.kind not in worker.get("kinds", ()):
        return False
    store = worker.get("store", {})
    return all(name in store.get(family, ()) for _, family, name in spec.required_models())


def holds(worker: Worker, spec: AnySpec) -> bool:
    name = model_of(spec)
    return any(m["name"] == name for m in worker.get("models", ()))


def _capability(worker: Worker) -> tuple:
    """What decides whether a worker can run a job (`can_run`): equal for a whole group."""
    store = worker.get("store", {})
    return (
        worker["hardware"],
        tuple(worker.get("kinds", ())),
        tuple(sorted((family, tuple(sorted(names))) for family, names in store.items())),
    )


@dataclass
class FleetIndex:
    """The live, not draining workers (name order) grouped by capability; built when the
    fleet changed, shared by the passes until it changes again."""

    workers: dict[str, Worker]
    order: dict[str, int] = field(init=False)
    names: list[str] = field(init=False)
    groups: list[Worker] = field(init=False)  # one representative per capability
    group_of: dict[str, int] = field(init=False)
    members: list[list[str]] = field(init=False)
    holders: dict[str, set[str]] = field(init=False)  # model name -> workers holding it
    largest: int = field(init=False)  # the largest model's bytes in any cache
    copies: dict[str, int] = field(init=False)  # model name -> how many workers hold it
    room: dict[str, int] = field(init=False)  # free cache bytes
    _able: dict[tuple, tuple[int, ...]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.names = list(self.workers)
        self.order = {name: i for i, name in enumerate(self.names)}
        self.groups, self.group_of, self.members, self.holders, self.room = [], {}, [], {}, {}
        self.largest = 0
        seen: dict[tuple, int] = {}
        for name, w in self.workers.items():
            cap = _capability(w)
            if cap not in seen:
                seen[cap] = len(self.groups)
                self.groups.append(w)
                self.members.append([])
            self.group_of[name] = seen[cap]
            self.members[seen[cap]].append(name)
            for m in w.get("models", ()):
                self.holders.setdefault(m["name"], set()).add(name)
                self.largest = max(self.largest, m.get("size_bytes", 0))
            self.room[name] = w.get("cache_budget", 0) - w.get("cache_bytes", 0)
        self.copies = {m: len(names) for m, names in self.holders.items()}

    def able(self, spec: AnySpec, allowed: list[str] | None) -> tuple[int, ...]:
        """The groups whose workers can run the job."""
        key = (
            spec.hardware,
            spec.kind,
            tuple(spec.required_models()),
            None if allowed is None else tuple(allowed),
        )
        found = self._able.get(key)
        if found is None:
            found = tuple(i for i, w in enumerate(self.groups) if can_run(w, spec, allowed))
            self._able[key] = found
        return found


@dataclass
class FleetView:
    """One pass's fleet. The dispatcher marks each worker it sends a job with `occupy`; the
    indexed questions below also skip any name found in `busy`."""

    workers: dict[str, Worker]
    busy: set[str] = field(default_factory=set)
    # Dispatched or running jobs per owner, and how many each may have (its quota).
    active: Counter[str] = field(default_factory=Counter)
    limits: dict[str, int] = field(default_factory=dict)
    index: FleetIndex | None = None
    draining: int = 0  # live workers left out of `workers` because they are draining
    _idle: dict[str, None] | None = field(default=None, repr=False)  # name order
    _heaps: list[list[tuple[float, int, int, str]]] | None = field(default=None, repr=False)

    def at_limit(self, owner: str) -> int | None:
        """The owner's running limit when it has reached it, else None."""
        limit = self.limits.get(owner)
        return limit if limit is not None and self.active[owner] >= limit else None

    def idle(self) -> list[Worker]:
        return [w for n, w in self.workers.items() if n not in self.busy]

    def occupy(self, name: str, owner: str) -> None:
        """`name` took one of `owner`'s jobs."""
        self.busy.add(name)
        self.active[owner] += 1
        if self._idle is not None:
            self._idle.pop(name, None)

    # -- indexed questions (the dispatcher's choose) ----------------------------------------

    def _index(self) -> FleetIndex:
        if self.index is None or self.index.workers is not self.workers:
            self.index = FleetIndex(self.workers)
        return self.index

    def _idle_names(self) -> dict[str, None]:
        if self._idle is None:
            self._idle = {n: None for n in self.workers if n not in self.busy}
        return self._idle

    def has_idle(self) -> bool:
        return bool(self._idle_names())

    def able_groups(self, spec: AnySpec, allowed: list[str] | None) -> tuple[int, ...]:
        return self._index().able(spec, allowed)

    def first_idle_holder(self, groups: tuple[int, ...], model: str) -> Worker | None:
        """The first idle worker (name order) of `groups` that holds `model`."""
        index = self._index()
        holders = index.holders.get(model)
        if not holders:
            return None
        idle = self._idle_names()

        def fits(name: str) -> bool:
            return name not in self.busy and index.group_of[name] in groups

        if len(idle) <= len(holders):  # walk the smaller side
            found = next((n for n in idle if n in holders and fits(n)), None)
        else:
            fitting = (n for n in holders if n in idle and fits(n))
            found = min(fitting, key=index.order.__getitem__, default=None)
        return None if found is None else self.workers[found]

    def busy_holders(
        self, groups: tuple[int, ...], model: str, among: set[str] | None = None
    ) -> list[str]:
        """The busy workers of `groups` that hold `model` (or, given `among`, those of
        `among`: e.g. the workers just sent a job for it)."""
        index = self._index()
        names = index.holders.get(model, set()) if among is None else among
        found = [
            n
            for n in names
            if n in self.busy and n in index.group_of and index.group_of[n] in groups
        ]
        return sorted(found, key=index.order.__getitem__)

    def cheapest_idle(
        self, groups: tuple[int, ...], regret: Callable[[Worker], float]
    ) -> Worker | None:
        """The idle worker of `groups` whose cache loses least by loading a model
        (`regret`, read once per worker per pass), then the one with most free cache room,
        then the first in name order."""
        index = self._index()
        if self._heaps is None:
            idle = self._idle_names()
            self._heaps = []
            for members in index.members:
                heap = [
                    (regret(self.workers[n]), -index.room[n], index.order[n], n)
                    for n in members
                    if n in idle
                ]
                heapq.heapify(heap)
                self._heaps.append(heap)
        best: tuple[float, int, int, str] | None = None
        for g in groups:
            heap = self._heaps[g]
            while heap and heap[0][3] in self.busy:
                heapq.heappop(heap)  # taken since the heap was built
            if heap and (best is None or heap[0] < best):
                best = heap[0]
        return None if best is None else self.workers[best[3]]


class FleetReader:
    """Reads a `FleetView` per pass, keeping what changes slowly between passes."""

    def __init__(self, redis: Redis, refresh_s: float) -> None:
        self.redis = redis
        self.refresh_s = refresh_s
        self._read_at = float("-inf")
        self._raw: dict[str, bytes] = {}
        self._docs: dict[str, Worker] = {}  # every live worker, name order
        self._draining: frozenset[str] = frozenset()
        self._workers: dict[str, Worker] = {}  # live, not draining (shared by the views)
        self._index: FleetIndex | None = None
        self._changed = True

    def live(self, fresh: bool = False) -> dict[str, Worker]:
        """Every live worker's heartbeat, by name; re-read if older than `refresh_s`."""
        now = time.monotonic()
        if fresh or now - self._read_at >= self.refresh_s:
            self._read_heartbeats()
            self._read_at = now
        return self._docs

    def _read_heartbeats(self) -> None:
        names = sorted(n.decode() for n in self.redis.smembers(keys.workers_index()))
        beats = self.redis.mget([keys.worker(n) for n in names]) if names else []
        stale = [n for n, beat in zip(names, beats, strict=True) if beat is None]
        if stale:
            self.redis.srem(keys.workers_index(), *stale)
        raw = {n: b for n, b in zip(names, beats, strict=True) if b is not None}
        if raw == self._raw:
            return
        docs = {}
        for name, beat in raw.items():
            docs[name] = self._docs[name] if self._raw.get(name) == beat else json.loads(beat)
        self._raw, self._docs = raw, docs
        self._changed = True  # the views' workers are rebuilt with the drain flags

    def _reread(self, changed: list[bytes]) -> None:
        """The heartbeats of the workers whose cache changed since the last pass."""
        names = sorted({n.decode() for n in changed})
        if any(n not in self._docs for n in names):
            self._read_heartbeats()  # a new worker: the whole fleet, in name order
            return
        beats = self.redis.mget([keys.worker(n) for n in names])
        fresh = {n: b for n, b in zip(names, beats, strict=True) if b and b != self._raw[n]}
        if fresh:
            self._raw = {**self._raw, **fresh}
            self._docs = {**self._docs, **{n: json.loads(b) for n, b in fresh.items()}}
            self._changed = True

    def view(self) -> FleetView:
        """The fleet for one pass, in two round trips (three after a cache changed)."""
        docs = self.live()
        names = list(docs)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.worker_jobs())
            pipe.hgetall(keys.owner_jobs())
            pipe.hgetall(keys.running_limits())
            pipe.spop(keys.fleet_changed(), CHANGED_PER_PASS)
            if names:
                pipe.exists(*[keys.drain(n) for n in names])
            busy_raw, active_raw, limits_raw, changed, *draining_count = pipe.execute()
        if changed:
            self._reread(changed)
            docs = self._docs
        draining: frozenset[str] = frozenset()
        if draining_count and draining_count[0]:
            draining = draining_of(self.redis, names)
        if self._changed or draining != self._draining:
            self._workers = {n: w for n, w in docs.items() if n not in draining}
            self._draining, self._changed = draining, False
            self._index = FleetIndex(self._workers)
        return FleetView(
            self._workers,
            busy={k.decode() for k, v in busy_raw.items() if int(v) > 0},
            active=Counter({k.decode(): int(v) for k, v in active_raw.items()}),
            limits={k.decode(): int(v) for k, v in limits_raw.items()},
            index=self._index,
            draining=len(self._draining),
        )
