"""Model affinity: what the dispatcher knows about the fleet's caches beyond the heartbeats,
and what a cold load costs.

The dispatcher routes a job to an idle worker holding its model when there is one. When
there is not, it weighs, in seconds:
- waiting for a busy worker that holds the model (or was just sent a job for it): its
  expected free time — when the dispatcher sent its job plus that job's expected time (the
  render median of its timing class on that hardware, plus its load if it was sent cold),
  plus the jobs that already decided to wait for it (`reserve`);
- against a cold load on an idle worker: the model's measured load time on that class
  (cache entries report `cost_s` in heartbeats; remembered after the model left every
  cache; a model never loaded there: the median load there) or, if more, how much longer
  the jobs sent cold there took than those sent warm, counted LOAD_WEIGHT times:
  a load takes its own time now and, in a full cache, later reloads of what it evicts and
  a second copy's room (`python -m bench.bench_scheduler`: 4 saved more loads than 2, and
  waits stayed below plain routing's).
(`Dispatcher` keeps the order: if a later job of the model would load it cold while an
earlier one waits for the holder, the earlier one loads it.)
The job waits for the holder if that is sooner, never longer than `affinity_wait_s` (a job
for a cold model is never starved); with nothing measured yet it waits for a worker that
holds the model (not one just sent it), up to that bound.

Which idle worker loads a cold model: the one whose cache loses least (`victim`): nothing
if it has room, else the value of its least valuable model — its demand (dispatches of it,
halving every DEMAND_HALF_LIFE dispatches, plus the jobs waiting for it in the owners'
heads) × its load cost; nothing for a model another worker holds too. The dispatch names
that model (the record's `evict`), and the worker's cache evicts it before any other: the
fleet's choice, which the worker's own policy (what it alone has seen) cannot make.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass

from redis import Redis

from scheduler.fleetview import FleetView, Worker
from scheduler.timing import RenderTimes, model_of, timing_of
from shared.jobspec import AnySpec, UpscaleSpec

LOAD_WEIGHT = 4.0
DEMAND_HALF_LIFE = 50  # dispatches
TIMES_REFRESH_S = 5.0  # render medians are re-read this often
TOOK_KEPT = 50  # jobs' times kept per hardware class, warm and cold
TOOK_MIN = 3  # ... and needed before they count


@dataclass
class Sent:
    """The job the dispatcher last sent a worker, while that worker is busy with it."""

    model: str
    hardware: str
    warm: bool
    at: float  # time.time() when sent
    expected_s: float | None  # its expected time on the worker (None: nothing measured)
    evicts: str = ""  # the model its load was to evict first


class Affinity:
    """Kept by the dispatcher across passes; `refresh` once per pass with the pass's view."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._sent: dict[str, Sent] = {}  # busy worker -> what it was sent
        self._coming: dict[str, set[str]] = {}  # model -> the busy workers just sent it
        self._evicting: Counter[str] = Counter()  # model -> the sent loads to evict it
        self.load_s: dict[tuple[str, str], float] = {}  # (hardware, model) -> seconds
        self.waiting: dict[str, int] = {}  # model -> jobs in the owners' heads (this pass)
        self._demand: dict[str, tuple[float, int]] = {}  # model -> (count, at dispatch n)
        self._dispatches = 0
        self._times = RenderTimes(redis)
        self._times_at = time.monotonic()
        self._reserved: dict[str, float] = {}  # worker -> seconds promised to waiting jobs
        self._learned_from: dict[str, Worker] | None = None
        self._step_s: dict[str, float] = {}  # hardware -> seconds per step per megapixel
        # (hardware, warm) -> how long the latest jobs sent there took, sent to free again.
        self._took: dict[tuple[str, bool], deque[float]] = {}

    def refresh(self, view: FleetView) -> None:
        """Learn how long the jobs of workers free again took, and the caches' load costs;
        forget what was sent to them."""
        now = time.time()
        for name, sent in list(self._sent.items()):
            if name not in view.busy:
                took = self._took.setdefault((sent.hardware, sent.warm), deque(maxlen=TOOK_KEPT))
                took.append(now - sent.at)
                self.forget(name)
        self._reserved = {}
        if view.workers is not self._learned_from:  # the heartbeats changed
            self._learned_from = view.workers
            for worker in view.workers.values():
                for m in worker.get("models", ()):
                    if m.get("cost_s"):
                        self.load_s[(worker["hardware"], m["name"])] = float(m["cost_s"])
        if time.monotonic() - self._times_at >= TIMES_REFRESH_S:
            self._times, self._times_at = RenderTimes(self.redis), time.monotonic()

    # -- demand -------------------------------------------------------------------------

    def demand(self, model: str) -> float:
        return self._dispatched(model) + self.waiting.get(model, 0)

    def _dispatched(self, model: str) -> float:
        """The model's dispatches so far, each halving every DEMAND_HALF_LIFE dispatches."""
        count, at = self._demand.get(model, (0.0, 0))
        return count * 0.5 ** ((self._dispatches - at) / DEMAND_HALF_LIFE)

    def dispatched(self, worker: Worker, spec: AnySpec, warm: bool, evicts: str = "") -> None:
        """`worker` was sent the job (`warm`: it holds the job's model; `evicts`: the model
        its load is to evict first)."""
        model = model_of(spec)
        self._dispatches += 1
        self._demand[model] = (self._dispatched(model) + 1, self._dispatches)
        expected = self.expected_s(worker, spec, warm)
        name = worker["name"]
        self.forget(name)
        self._sent[name] = Sent(model, worker["hardware"], warm, time.time(), expected, evicts)
        self._coming.setdefault(model, set()).add(name)
        if evicts:
            self._evicting[evicts] += 1

    def forget(self, name: str) -> None:
        """`name` is free again (or its dispatch did not happen)."""
        sent = self._sent.pop(name, None)
        if sent is None:
            return
        self._coming[sent.model].discard(name)
        if sent.evicts:
            self._evicting[sent.evicts] -= 1

    def coming(self, model: str) -> set[str]:
        """The busy workers just sent a job for `model`."""
        return self._coming.get(model, set())

    # -- time ---------------------------------------------------------------------------

    def render_s(self, hardware: str, spec: AnySpec) -> float | None:
        """The render median of the job's timing class on `hardware`; for a class with no
        history yet (another model, say), scaled from the last median seen there by steps
        and pixels; an upscale without history: None."""
        median = self._times.median(hardware, timing_of(spec))
        work = _work(spec)
        if median is None:
            rate = self._step_s.get(hardware)
            return None if rate is None or work is None else rate * work
        if work:
            self._step_s[hardware] = median / work
        return median

    def load_cost(self, hardware: str, model: str) -> float | None:
        """What a cold start of the model costs on `hardware`: its load time as the caches
        measured it (for one never loaded there, the median load there), or more if jobs
        sent cold there took longer than warm ones by more (a fresh pipeline's first run
        is slower too)."""
        found = self.load_s.get((hardware, model))
        if found is None:
            there = [s for (h, _), s in self.load_s.items() if h == hardware]
            found = statistics.median(there) if there else None
        cold, warm = self._took.get((hardware, False)), self._took.get((hardware, True))
        if cold and warm and min(len(cold), len(warm)) >= TOOK_MIN:
            penalty = statistics.median(cold) - statistics.median(warm)
            found = penalty if found is None else max(found, penalty)
        return found

    def expected_s(self, worker: Worker, spec: AnySpec, warm: bool) -> float | None:
        render = self.render_s(worker["hardware"], spec)
        if render is None:
            return None
        if warm:
            return render
        load = self.load_cost(worker["hardware"], model_of(spec))
        return None if load is None else render + load

    def free_in(self, name: str, now: float) -> float | None:
        """Seconds until busy worker `name` can start another job (None: not known)."""
        sent = self._sent.get(name)
        if sent is None or sent.expected_s is None:
            return None
        return max(0.0, sent.at + sent.expected_s - now) + self._reserved.get(name, 0.0)

    def reserve(self, name: str, seconds: float) -> None:
        """A job decided to wait for `name`: the next one waits that much longer."""
        self._reserved[name] = self._reserved.get(name, 0.0) + seconds

    # -- the decision ---------------------------------------------------------------------

    def worth_waiting(
        self,
        view: FleetView,
        held: list[str],
        coming: list[str],
        cold: Worker | None,
        spec: AnySpec,
    ) -> bool:
        """Whether the job should wait for a busy worker that holds its model (`held`) or
        was just sent a job for it (`coming`) rather than load it on `cold`."""
        if cold is None:
            return bool(held or coming)
        now = time.time()
        load = self.load_cost(cold["hardware"], model_of(spec))
        known = sorted((w, n) for n in [*held, *coming] if (w := self.free_in(n, now)) is not None)
        if not known or load is None:
            return bool(held)  # nothing measured: wait for a holder, up to affinity_wait_s
        soonest, name = known[0]
        if soonest > LOAD_WEIGHT * load:
            return False
        self.reserve(name, self.render_s(view.workers[name]["hardware"], spec) or 0.0)
        return True

    def victim(
        self, worker: Worker, copies: dict[str, int], largest: int
    ) -> tuple[float, Worker | None]:
        """What `worker` loses by loading a model, and the cached model it would lose: none
        if its cache has room for the largest model seen, else its least valuable unlocked
        model (a model another worker also holds is worth nothing here: its jobs can wait
        for that one)."""
        room = worker.get("cache_budget", 0) - worker.get("cache_bytes", 0)
        models = [m for m in worker.get("models", ()) if not m.get("locks")]
        if room >= largest or not models:
            return 0.0, None

        own = self._sent.get(worker["name"])

        def value(m: Worker) -> float:
            # Copies another worker was just told to evict do not count.
            going = self._evicting[m["name"]] - (own is not None and own.evicts == m["name"])
            if copies.get(m["name"], 1) - going > 1:
                return 0.0
            return self.demand(m["name"]) * (self.load_cost(worker["hardware"], m["name"]) or 1.0)

        least = min(models, key=value)
        return value(least), least


def _work(spec: AnySpec) -> float | None:
    """A diffusion job's steps x megapixels (what its render time scales with); None for an
    upscale."""
    if isinstance(spec, UpscaleSpec):
        return None
    width, height = spec.output_size()
    return spec.steps * width * height / 1e6
