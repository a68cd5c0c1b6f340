"""The farm's figures: how many jobs wait, run and finish, per class, kept as they change.

Operators' metrics (`GET /metrics`) and the autoscaler's demand (`GET /api/v1/fleet/demand`)
read these at request time from Redis, so every dashboard replica answers the same, and a
read costs a fixed number of commands however long the queue is — never a scan of records.

They are kept in the records' one Lua step (scheduler/records.py includes `CENSUS_LUA`), so
a figure changes exactly when a job's status does:
- the census: each waiting or active job is a member of one sorted set, its cell —
  pending by the class it asked for (`auto` too) and priority, dispatched and running by
  its worker's class — scored by when it entered it (the oldest waiting job's age).
- dispatched jobs per owner (with its pending set: what its `max_queued` quota counts).
- counters: jobs finished by outcome (`lost`: an attempt whose worker went away; the job is
  requeued and counted again when it ends), dispatches per class, affinity hits/misses.
- histograms (bucket counts, sum, count): an attempt's run time per worker class, and the
  time per stage (queue wait, model load, render, upload).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from shared import keys
from shared.vocabulary import AUTO, Hardware, JobStatus, Priority

OUTCOMES = ("succeeded", "failed", "canceled", "lost")
STAGES = ("queue_wait", "model_load", "render", "upload")
AFFINITY = ("hit", "miss")
# Upper bounds of the histograms' buckets, in seconds (then +Inf): model loads and uploads
# take fractions of a second to minutes, renders seconds to an hour.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
ASKED = (*Hardware, AUTO)  # what a pending job may ask for

_CENSUS = keys.census("", "").removesuffix(":")
_HISTOGRAM = keys.histogram("", "").removesuffix(":")
_BUCKETS_LUA = ", ".join(f"{b:g}" for b in BUCKETS)

# Functions the records' transition script calls. census_cell: the sorted set a job in
# `status` belongs to (false: none, it is final); f = HMGET class_asked, worker_class,
# priority. count_edge: the counters and histograms of one status change.
CENSUS_LUA = f"""
local function census_cell(status, f)
  if status == 'pending' then
    return '{_CENSUS}pending:' .. (f[1] or '{AUTO}') .. ':' .. (f[3] or 'normal')
  end
  if status == 'dispatched' or status == 'running' then
    return '{_CENSUS}' .. status .. ':' .. (f[2] or 'unknown')
  end
  return false
end
local BUCKETS = {{{_BUCKETS_LUA}}}
local function observe(name, label, v)
  if not v or v < 0 then return end
  local i = 1
  while i <= #BUCKETS and v > BUCKETS[i] do i = i + 1 end
  local key = '{_HISTOGRAM}' .. name .. ':' .. label
  redis.call('HINCRBY', key, i, 1)
  redis.call('HINCRBYFLOAT', key, 'sum', v)
  redis.call('HINCRBY', key, 'count', 1)
end
local function count_edge(job, current, target)
  local final = target == 'succeeded' or target == 'failed' or target == 'canceled'
  if final then redis.call('HINCRBY', '{keys.counters()}', 'finished:' .. target, 1) end
  if target == 'pending' and (current == 'running' or current == 'dispatched') then
    redis.call('HINCRBY', '{keys.counters()}', 'finished:lost', 1)
  end
  local f = redis.call('HMGET', job, 'worker_class', 'warm', 'eligible_at', 'started_at',
    'finished_at', 'load_s', 'render_s', 'upload_s', 'owner')
  if target == 'dispatched' or current == 'dispatched' then
    local by = 1
    if current == 'dispatched' then by = -1 end
    redis.call('HINCRBY', '{keys.dispatched_by_owner()}', f[9] or '', by)
  end
  local n = {{}}
  for i = 3, 8 do n[i] = tonumber(f[i]) end
  if target == 'dispatched' then
    redis.call('HINCRBY', '{keys.counters()}', 'dispatches:' .. (f[1] or 'unknown'), 1)
    local hit = 'miss'
    if f[2] == '1' then hit = 'hit' end
    redis.call('HINCRBY', '{keys.counters()}', 'affinity:' .. hit, 1)
  elseif target == 'running' and n[3] and n[4] then
    observe('stage', 'queue_wait', n[4] - n[3])
  end
  if current == 'running' and final and n[4] and n[5] then
    observe('duration', f[1] or 'unknown', n[5] - n[4])
  end
  if target == 'succeeded' and n[7] then
    local load = n[6] or 0
    observe('stage', 'model_load', load)
    observe('stage', 'render', n[7] - load)
    observe('stage', 'upload', n[8])
  end
end
"""


@dataclass(frozen=True)
class Histogram:
    cumulative: list[tuple[str, int]]  # (upper bound as Prometheus writes it, count <= it)
    sum: float
    count: int


@dataclass
class Figures:
    """Everything the census holds, read in one round trip."""

    pending: dict[tuple[str, Priority], int]  # (class asked, priority) -> jobs
    oldest_pending_s: dict[str, float]  # class asked -> age of its oldest waiting job (0: none)
    dispatched: dict[Hardware, int]
    running: dict[Hardware, int]
    counters: dict[str, int]
    durations: dict[Hardware, Histogram]
    stages: dict[str, Histogram]
    leader_present: bool
    recorded: int = 0  # job records Redis holds
    trash: int = 0  # storage entries of deleted jobs not deleted yet
    redis_memory: dict[str, int] = field(default_factory=dict)

    def finished(self, outcome: str) -> int:
        return self.counters.get(f"finished:{outcome}", 0)

    def dispatches(self, hardware: Hardware) -> int:
        return self.counters.get(f"dispatches:{hardware}", 0)

    def deleted(self) -> int:
        return self.counters.get("deleted", 0)

    def affinity(self, result: str) -> int:
        return self.counters.get(f"affinity:{result}", 0)

    def pending_of(self, asked: str) -> int:
        return sum(n for (cls, _), n in self.pending.items() if cls == asked)


def _histogram(raw: dict[bytes, bytes]) -> Histogram:
    counts = {k.decode(): v.decode() for k, v in raw.items()}
    bounds = [f"{b:g}" for b in BUCKETS] + ["+Inf"]
    total, cumulative = 0, []
    for i, bound in enumerate(bounds, start=1):
        total += int(counts.get(str(i), 0))
        cumulative.append((bound, total))
    return Histogram(cumulative, float(counts.get("sum", 0)), int(counts.get("count", 0)))


def read_census(redis: Redis) -> Figures:
    """The figures, from a fixed number of O(1) or O(log n) reads in one pipeline."""
    cells = [(cls, p) for cls in ASKED for p in Priority]
    with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        for cls, p in cells:
            pipe.zcard(keys.census(JobStatus.PENDING, cls, p))
            pipe.zrange(keys.census(JobStatus.PENDING, cls, p), 0, 0, withscores=True)
        for status in (JobStatus.DISPATCHED, JobStatus.RUNNING):
            for hw in Hardware:
                pipe.zcard(keys.census(status, hw))
        pipe.hgetall(keys.counters())
        for hw in Hardware:
            pipe.hgetall(keys.histogram("duration", hw))
        for stage in STAGES:
            pipe.hgetall(keys.histogram("stage", stage))
        pipe.exists(keys.dispatcher_lock())
        pipe.zcard(keys.jobs_index())
        pipe.llen(keys.trash())
        pipe.info("memory")
        answers: list[Any] = pipe.execute()
    seconds, micros = answers.pop(0)
    now = seconds + micros / 1e6
    pending, oldest = {}, dict.fromkeys(ASKED, 0.0)
    for cls, p in cells:
        pending[(cls, p)] = answers.pop(0)
        head = answers.pop(0)
        if head:
            oldest[cls] = max(oldest[cls], now - head[0][1])
    active = {
        status: {hw: answers.pop(0) for hw in Hardware}
        for status in (JobStatus.DISPATCHED, JobStatus.RUNNING)
    }
    counters = {k.decode(): int(v) for k, v in answers.pop(0).items()}
    durations = {hw: _histogram(answers.pop(0)) for hw in Hardware}
    stages = {stage: _histogram(answers.pop(0)) for stage in STAGES}
    leader = bool(answers.pop(0))
    recorded, trash = answers.pop(0), answers.pop(0)
    memory = answers.pop(0)
    return Figures(
        pending=pending,
        oldest_pending_s=oldest,
        dispatched=active[JobStatus.DISPATCHED],
        running=active[JobStatus.RUNNING],
        counters=counters,
        durations=durations,
        stages=stages,
        leader_present=leader,
        recorded=recorded,
        trash=trash,
        redis_memory={
            "used": int(memory.get("used_memory", 0)),
            "max": int(memory.get("maxmemory", 0)),
        },
    )


def demand(figures: Figures, workers: list[dict[str, Any]], auto_class: Hardware) -> dict:
    """Per class: jobs waiting for it, jobs on it (dispatched or running), its live workers,
    and the demand an autoscaler sizes it by (one job per worker): waiting + on it, the
    `auto` jobs counted for `auto_class`."""
    classes = {}
    for hw in Hardware:
        waiting = figures.pending_of(hw) + (figures.pending_of(AUTO) if hw == auto_class else 0)
        on_it = figures.dispatched[hw] + figures.running[hw]
        classes[hw.value] = {
            "pending": waiting,
            "running": on_it,
            "workers": sum(1 for w in workers if w.get("hardware") == hw),
            "demand": waiting + on_it,
        }
    return {"classes": classes, "at": time.time()}
