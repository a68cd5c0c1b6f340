"""Job records in Redis: the source of truth for a job's status, progress and outputs.

A record is a Redis hash. It is created, with its indexes and its place in the owner's
queue (and the owner's `max_queued` checked), by one Lua step (`create_in`).
Every change goes through one Lua script that checks the allowed previous status and, for
a worker's writes, the attempt it holds and that the attempt was dispatched to that worker
(fencing: a stale attempt, or the same attempt dispatched twice across a Redis failover,
can change nothing), keeps the active-status index sets, and bumps a monotonic `seq`.

Statuses are `JobStatus` (shared/vocabulary.py); the edges a job may take between them
are `TRANSITIONS` below, and `transition` refuses any other.
"""

from __future__ import annotations

import json
import time
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.client import Pipeline

from scheduler.census import CENSUS_LUA
from scheduler.pending import score as pending_score
from scheduler.timing import HISTORY, model_of, timing_of
from shared import keys
from shared.jobspec import INPUT_KEY, AnySpec, load_spec
from shared.storage import job_folder, thumbs_folder
from shared.vocabulary import AUTO, Hardware, JobStatus, Priority

S = JobStatus
# A write's fence: the attempt number, or "<attempt>:<worker>" (scheduler/leases.py `token`).
Fence = int | str
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
# Attempts a record's `history` keeps (the latest).
HISTORY_MAX = 20
_STATUS_INDEX = keys.index("status", "")
_OWNER_GALLERY = keys.gallery("") + ":"
_RENDER_TIMES = keys.render_times("", "").removesuffix("|")
_JSON_FIELDS = ("spec", "outputs", "seeds", "hardware", "history")
_INT_FIELDS = ("seq", "attempt", "attempts", "cancel_requested", "warm")
_FLOAT_FIELDS = (
    "progress",
    "render_s",
    "load_s",
    "upload_s",
    "created_at",
    "dispatched_at",
    "started_at",
    "finished_at",
    "eligible_at",
)

# KEYS: job hash, dispatched set, running set, events stream, the team's gallery, busy
# workers, owners' active jobs. ARGV: job id, the fence ("" = none; "<attempt>", or
# "<attempt>:<worker>" for the attempt as the worker it was dispatched to holds it), allowed
# previous statuses (comma separated; "*" = unchanged status), new status, field/value
# pairs. In the same step as the change: the active-status sets, the dispatcher's counts of
# active jobs per worker and per owner, the client-facing status index, the attempts
# history, on success the gallery and the render-time history, the census and counters
# (scheduler/census.py), and an event (scheduler/events.py). The per-owner keys are built
# here from the record (one Redis, not a Cluster).
_CELL_FIELDS = "'class_asked', 'worker_class', 'priority'"
_CELL_FIELD_SET = ",class_asked,worker_class,priority,"
_TRANSITION = (
    CENSUS_LUA
    + f"""
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
if ARGV[2] ~= '' then
  local f = redis.call('HMGET', KEYS[1], 'attempt', 'target')
  local held = f[1]
  if string.find(ARGV[2], ':', 1, true) then held = (f[1] or '') .. ':' .. (f[2] or '') end
  if held ~= ARGV[2] then return 0 end
end
local allowed, target = ARGV[3], ARGV[4]
if allowed == '*' then
  if current ~= target then return 0 end
elseif not string.find(',' .. allowed .. ',', ',' .. current .. ',', 1, true) then
  return 0
end
-- A census cell changes only with the status or a field it is made of, never with progress.
local moves = current ~= target
for i = 5, #ARGV, 2 do
  if string.find({_CELL_FIELD_SET!r}, ',' .. ARGV[i] .. ',', 1, true) then moves = true end
end
local cell_before = moves and census_cell(current, redis.call('HMGET', KEYS[1], {_CELL_FIELDS}))
local function active(s) return s == 'dispatched' or s == 'running' end
local holder_before = false  -- the worker an active job occupies: target, then worker
if current ~= target and active(current) then
  local f = redis.call('HMGET', KEYS[1], 'target', 'worker')
  if current == 'running' then holder_before = f[2] else holder_before = f[1] end
end
redis.call('HSET', KEYS[1], 'status', target)
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
-- The census cell follows the status, and a waiting job's priority (keeping its age).
local cell_after = moves and census_cell(target, redis.call('HMGET', KEYS[1], {_CELL_FIELDS}))
if cell_before ~= cell_after then
  local since = now
  if cell_before then
    if current == target then
      since = tonumber(redis.call('ZSCORE', cell_before, ARGV[1])) or now
    end
    redis.call('ZREM', cell_before, ARGV[1])
  end
  if cell_after then redis.call('ZADD', cell_after, since, ARGV[1]) end
end
local sets = {{dispatched = KEYS[2], running = KEYS[3]}}
if current ~= target and (active(current) or active(target)) then
  local f = redis.call('HMGET', KEYS[1], 'owner', 'target', 'worker')
  local function add(hash, name, n)
    if not name or name == '' then return end
    if redis.call('HINCRBY', hash, name, n) <= 0 then redis.call('HDEL', hash, name) end
  end
  local holder_after = false
  if target == 'running' then holder_after = f[3] elseif target == 'dispatched' then
    holder_after = f[2] end
  if holder_before ~= holder_after then
    add(KEYS[6], holder_before, -1)
    add(KEYS[6], holder_after, 1)
  end
  if active(current) ~= active(target) then
    if active(target) then add(KEYS[7], f[1], 1) else add(KEYS[7], f[1], -1) end
  end
end
if current ~= target then
  if sets[current] then redis.call('SREM', sets[current], ARGV[1]) end
  if sets[target] then redis.call('SADD', sets[target], ARGV[1]) end
  count_edge(KEYS[1], current, target)
  local function view(s)
    if s == 'pending' or s == 'dispatched' then return 'queued' end
    return s
  end
  if view(current) ~= view(target) then
    local created = redis.call('HGET', KEYS[1], 'created_at')
    redis.call('ZREM', '{_STATUS_INDEX}' .. view(current), ARGV[1])
    redis.call('ZADD', '{_STATUS_INDEX}' .. view(target), created, ARGV[1])
  end
  if target == 'running' then
    local f = redis.call('HMGET', KEYS[1], 'attempt', 'worker', 'started_at', 'history')
    local h = cjson.decode(f[4] or '[]')
    table.insert(h, {{attempt = tonumber(f[1]), worker = f[2] or cjson.null,
      started_at = tonumber(f[3]) or now, finished_at = cjson.null, outcome = cjson.null,
      error = cjson.null}})
    while #h > {HISTORY_MAX} do table.remove(h, 1) end
    redis.call('HSET', KEYS[1], 'history', cjson.encode(h))
  elseif current == 'running' then
    local f = redis.call('HMGET', KEYS[1], 'history', 'finished_at', 'error', 'note')
    local h = cjson.decode(f[1] or '[]')
    local last = h[#h]
    if last and last.outcome == cjson.null then
      if target == 'pending' then
        last.finished_at, last.outcome, last.error = now, 'requeued', f[4] or cjson.null
      else
        last.finished_at, last.outcome = tonumber(f[2]) or now, target
        if target ~= 'succeeded' and f[3] and f[3] ~= '' then last.error = f[3] end
      end
      redis.call('HSET', KEYS[1], 'history', cjson.encode(h))
    end
  end
  if target == 'succeeded' then
    local f = redis.call('HMGET', KEYS[1], 'outputs', 'owner', 'finished_at', 'timing',
      'ran_on', 'render_s')
    local outs = cjson.decode(f[1] or '[]')
    local score = tonumber(f[3]) or now
    for i = 1, #outs do
      local member = ARGV[1] .. ':' .. (i - 1)
      redis.call('ZADD', KEYS[5], score, member)
      redis.call('ZADD', '{_OWNER_GALLERY}' .. (f[2] or ''), score, member)
    end
    if f[4] and f[5] and f[6] and f[4] ~= '' and f[5] ~= '' and f[6] ~= '' then
      local times = '{_RENDER_TIMES}' .. f[5] .. '|' .. f[4]
      redis.call('LPUSH', times, f[6])
      redis.call('LTRIM', times, 0, {HISTORY - 1})
    end
  end
end
local rec = redis.call('HMGET', KEYS[1], 'owner', 'progress', 'note')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', {EVENTS_MAXLEN}, '*', 'job', ARGV[1],
  'status', target, 'progress', rec[2] or '0', 'owner', rec[1] or '', 'seq', seq,
  'note', rec[3] or '')
return 1
"""
)


# KEYS: dispatched set, running set, busy workers, owners' active jobs. The two counts
# rebuilt from the records the active sets name (what the transition step keeps).
_REBUILD_ACTIVE = f"""
redis.call('DEL', KEYS[3], KEYS[4])
for i, status in ipairs({{'dispatched', 'running'}}) do
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    local f = redis.call('HMGET', '{keys.job("")}' .. id, 'status', 'owner', 'target', 'worker')
    if f[1] == status then
      local holder = f[3]
      if status == 'running' then holder = f[4] end
      if holder and holder ~= '' then redis.call('HINCRBY', KEYS[3], holder, 1) end
      if f[2] then redis.call('HINCRBY', KEYS[4], f[2], 1) end
    end
  end
end
return 1
"""


def _script_call(
    job_id: str, to: JobStatus, allowed: str, fence: int | None, fields: dict[str, Any]
) -> tuple[list[str], list[Any]]:
    args: list[Any] = [job_id, "" if fence is None else fence, allowed, to]
    for name, value in fields.items():
        args += [name, _encode(value)]
    keys_ = [
        keys.job(job_id),
        keys.in_status(S.DISPATCHED),
        keys.in_status(S.RUNNING),
        keys.events(),
        keys.gallery(),
        keys.worker_jobs(),
        keys.owner_jobs(),
    ]
    return keys_, args


def _edge(to: JobStatus, allowed_from: tuple[JobStatus, ...]) -> str:
    """The script's `allowed` argument for edges into `to`; an edge not in TRANSITIONS is a
    programming error (ValueError)."""
    illegal = [s for s in allowed_from if to not in TRANSITIONS[s]]
    if illegal:
        raise ValueError(f"no transition {', '.join(illegal)} -> {to}")
    return ",".join(allowed_from)


# For a client with a connection of its own (an asyncio one: the dispatch benchmark's
# simulated workers): the script, and the KEYS and ARGV of a `transition`.
TRANSITION_SCRIPT = _TRANSITION


def transition_call(
    job_id: str,
    to: JobStatus,
    allowed_from: tuple[JobStatus, ...],
    fence: int | None = None,
    **fields: Any,
) -> tuple[list[str], list[Any]]:
    return _script_call(job_id, to, _edge(to, allowed_from), fence, fields)


def decode(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    """A record as `JobRecords.get` returns it, from its hash's raw fields."""
    return _decode(raw)


def _encode(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def as_record(fields: dict[str, str]) -> dict[str, Any]:
    """The record `create_in`'s fields make, decoded like `get`'s (without reading it back)."""
    return _parse(dict(fields))


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
    return _parse({k.decode(): v.decode() for k, v in raw.items()}) if raw else None


def _parse(rec: dict[str, Any]) -> dict[str, Any]:
    """A record's fields as stored (strings) made its values, in place."""
    for name in _JSON_FIELDS:
        if name in rec:
            rec[name] = json.loads(rec[name])
    for name in _INT_FIELDS:
        rec[name] = int(rec.get(name, 0))
    for name in _FLOAT_FIELDS:
        if rec.get(name):
            rec[name] = float(rec[name])
    if not isinstance(rec.get("history"), list):
        rec["history"] = []  # Lua's cjson writes an empty list as {}; never written empty
    rec["status"] = JobStatus(rec["status"])
    rec["priority"] = Priority(rec["priority"])
    return rec


CREATED = b"created"
TAKEN = b"taken:"  # + the job (or batch) id an earlier request with the same key made
IDEMPOTENCY_TTL_S = 24 * 3600  # how long an Idempotency-Key gives back its job

# KEYS: the job hash, the jobs index, its census cell, its owner, status, model and hardware
# indexes, the events stream, the owner's pending set, the pending owners, the wake-up list,
# the owners' dispatched counts (kept by the census), the hash of the sibling it comes after,
# the owners' running limits, the audit log, the input images' reference counts. ARGV: job
# id, created at, owner, its pending score, wake ("1" or ""), max queued ("" = not checked),
# jobs counted against it, "1" if the sibling must exist, the events' length, the owner's
# running limit ("" = unchanged), the audit log's length ("" = no entry), how many audit
# values follow (n), how many input image keys (m), the audit entry's n field/value values,
# the m input keys, then the record's field/value pairs. The quota check, the record, its
# indexes, its event, its place in the owner's queue, its inputs' counts and its audit entry
# in one step: two submissions cannot both take the last place, and no job is recorded
# without its entry. KEYS[17], if given: the Idempotency-Key's; a job it already names is
# the answer (nothing is made), else it names this one for IDEMPOTENCY_TTL_S.
_CREATE = f"""
if KEYS[17] then
  local first = redis.call('GET', KEYS[17])
  if first then return '{TAKEN.decode()}' .. first end
end
if ARGV[8] ~= '' and redis.call('EXISTS', KEYS[13]) == 0 then return -1 end
if ARGV[6] ~= '' then
  local queued = redis.call('ZCARD', KEYS[9])
  queued = queued + tonumber(redis.call('HGET', KEYS[12], ARGV[3]) or '0')
  if queued + tonumber(ARGV[7]) > tonumber(ARGV[6]) then return queued end
end
local id, now, owner = ARGV[1], ARGV[2], ARGV[3]
local audited, inputs = tonumber(ARGV[12]), tonumber(ARGV[13])
redis.call('HSET', KEYS[1], unpack(ARGV, 14 + audited + inputs))
for i = 14 + audited, 13 + audited + inputs do redis.call('HINCRBY', KEYS[16], ARGV[i], 1) end
for i = 2, 7 do redis.call('ZADD', KEYS[i], now, id) end
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[9], '*',
  'job', id, 'status', '{S.PENDING}', 'progress', 0, 'owner', owner, 'seq', 1)
redis.call('ZADD', KEYS[9], ARGV[4], id)
redis.call('ZADD', KEYS[10], 'NX', 0, owner)  -- a new owner goes first
if ARGV[5] ~= '' then redis.call('LPUSH', KEYS[11], 1) end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[14], owner, ARGV[10]) end
if ARGV[11] ~= '' then
  redis.call('XADD', KEYS[15], 'MAXLEN', '~', ARGV[11], '*', unpack(ARGV, 14, 13 + audited))
end
if KEYS[17] then redis.call('SET', KEYS[17], id, 'EX', {IDEMPOTENCY_TTL_S}) end
return 'created'
"""

# KEYS: the job hash, the jobs index, the events stream, the team's gallery, the trash, the
# input images' reference counts, the farm's counters. ARGV: job id, the `seq` the caller
# read, the events' length, the job's storage folders, then its input keys. A finished job
# only, unchanged since it was read: the record, its place in every index and gallery, its
# inputs' counts (an input no job names any more goes to the trash, with the folders), its
# Idempotency-Key, its batch (and the batch's key) with the last of its jobs, the count of
# deleted jobs, and an event saying it was deleted, in one step. The per-owner, key and
# batch keys are built here from the record.
_DELETE = f"""
local f = redis.call('HMGET', KEYS[1], 'status', 'seq', 'owner', 'model', 'class_asked',
  'outputs', 'batch', 'progress', 'idempotency_key')
if not f[1] then return 'gone' end
if f[1] ~= '{S.SUCCEEDED}' and f[1] ~= '{S.FAILED}' and f[1] ~= '{S.CANCELED}' then
  return 'active'
end
if f[2] ~= ARGV[2] then return 'changed' end
local id, owner = ARGV[1], f[3] or ''
redis.call('ZREM', KEYS[2], id)
for _, ix in ipairs({{'owner:' .. owner, 'status:' .. f[1], 'model:' .. (f[4] or ''),
    'hardware:' .. (f[5] or '')}}) do
  redis.call('ZREM', '{keys.index("", "").removesuffix(":")}' .. ix, id)
end
for i = 1, #cjson.decode(f[6] or '[]') do
  local member = id .. ':' .. (i - 1)
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZREM', '{_OWNER_GALLERY}' .. owner, member)
end
for i = 4, #ARGV do
  if string.sub(ARGV[i], -1) == '/' then
    redis.call('RPUSH', KEYS[5], ARGV[i])
  else
    local left = redis.call('HINCRBY', KEYS[6], ARGV[i], -1)
    if left <= 0 then redis.call('HDEL', KEYS[6], ARGV[i]) end
    if left == 0 then redis.call('RPUSH', KEYS[5], ARGV[i]) end  -- below 0: never counted
  end
end
redis.call('DEL', KEYS[1])
local function free(key, first)  -- its Idempotency-Key may make a new job (or batch) now
  if key and key ~= '' then
    local idem = '{keys.idempotency("", "").removesuffix(":")}' .. owner .. ':' .. key
    if redis.call('GET', idem) == first then redis.call('DEL', idem) end
  end
end
if f[7] and f[7] ~= '' then  -- the batch goes with the last of its jobs, and then its key
  local batch = '{keys.batch("")}' .. f[7]
  local b = redis.call('HMGET', batch, 'children', 'idempotency_key')
  local children, left = cjson.decode(b[1] or '[]'), false
  for _, child in ipairs(children) do
    if redis.call('EXISTS', '{keys.job("")}' .. child) == 1 then left = true break end
  end
  if not left then
    redis.call('DEL', batch)
    free(b[2], f[7])
  end
else
  free(f[9], id)
end
redis.call('HINCRBY', KEYS[7], 'deleted', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'job', id, 'status', f[1],
  'progress', f[8] or '0', 'owner', owner, 'seq', tonumber(f[2]) + 1, 'deleted', 1)
return 'deleted'
"""


# KEYS: the batch hash, its last job's hash, its Idempotency-Key's (if any). ARGV: the
# batch's id, then its field/value pairs. The batch's record, last in the transaction of
# its jobs: written if they were (all or none); the key its first job took names it instead.
_CREATE_BATCH = f"""
if redis.call('EXISTS', KEYS[2]) == 0 then return end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[1], 'EX', {IDEMPOTENCY_TTL_S}) end
"""


def _input_keys(spec: AnySpec) -> list[str]:
    """The stored input images a job's spec names (once per field that names one)."""
    return [key for key in spec.images().values() if INPUT_KEY.match(key)]


def refused(reply: Any) -> int | None:
    """From `create_in`'s reply (not `taken`): None if the job was created, else the owner's
    queued count (-1: the sibling before it was refused)."""
    return None if reply == CREATED else int(reply)


def taken(reply: Any) -> str | None:
    """From `create_in`'s reply: the job (or batch) an earlier request with the same
    Idempotency-Key made (nothing was created), or None."""
    if isinstance(reply, bytes) and reply.startswith(TAKEN):
        return reply[len(TAKEN) :].decode()
    return None


class Deleted(StrEnum):
    """What `JobRecords.delete` did."""

    DELETED = "deleted"
    ACTIVE = "active"  # queued or running: not deleted
    GONE = "gone"  # no such job (never was, or deleted already)


class JobRecords:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._transition = redis.register_script(_TRANSITION)
        self._rebuild = redis.register_script(_REBUILD_ACTIVE)
        self._create = redis.register_script(_CREATE)
        self._delete = redis.register_script(_DELETE)
        self._create_batch = redis.register_script(_CREATE_BATCH)

    def create(
        self,
        job_id: str,
        spec: AnySpec,
        owner: str,
        priority: Priority,
        submitted_by: str = "",
        hardware: tuple[Hardware, ...] = tuple(Hardware),
        batch: str = "",
    ) -> dict[str, Any]:
        """`create_in` on its own, in one round trip; the record, not read back."""
        fields, _ = self.create_in(
            self.redis, job_id, spec, owner, priority, submitted_by, hardware, batch
        )
        return as_record(fields)

    def create_in(
        self,
        client: Redis | Pipeline,
        job_id: str,
        spec: AnySpec,
        owner: str,
        priority: Priority,
        submitted_by: str = "",
        hardware: tuple[Hardware, ...] = tuple(Hardware),
        batch: str = "",
        *,
        max_queued: int | None = None,
        counting: int = 1,
        after: str | None = None,
        wake: bool = True,
        max_running: int | None = None,
        audit: dict[str, str] | None = None,
        audit_max: int = 0,
        idempotency_key: str = "",
    ) -> tuple[dict[str, str], Any]:
        """Record a job and queue it for dispatch in one step, on `client` (a pipeline: many
        jobs in one round trip). Returns the fields it writes (`as_record` makes them a
        record) and the step's reply, `CREATED` or what `refused` reads when the job was
        refused (on a pipeline the reply comes with `execute()`).

        `submitted_by`: the account that submitted on the owner's behalf ("" = the owner);
        `hardware`: the classes the job may run on (the owner's quota); `batch`: the batch
        it belongs to ("" = none); `max_queued`: refuse the job if the owner's queued jobs
        plus `counting` (this one and the batch siblings after it) would exceed it; `after`:
        a sibling created before it in the same transaction, which must exist (so a batch
        whose first job was refused creates none); `wake`: wake the dispatcher (one wake-up
        serves many jobs); `max_running`: the owner's running limit, published with it;
        `audit`: an audit log entry's fields (`dashboard.audit.entry`), appended with the job
        (the log capped at about `audit_max` entries), never without it; `idempotency_key`:
        the key it was submitted with, so that deleting it frees the key (a key that names a
        job already: nothing is made, the reply is `taken`)."""
        now = time.time()
        model = model_of(spec)
        classes = list(hardware) if spec.hardware == AUTO else [spec.hardware]
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
            "model": model,
            "classes": ",".join(c for c in classes if c in hardware),  # where it may run
            "timing": timing_of(spec),  # its render-time history (scheduler/timing.py)
            "batch": batch,
            "class_asked": spec.hardware,  # its census cell while it waits
            "idempotency_key": idempotency_key,
        }
        stored = {name: _encode(value) for name, value in fields.items()}
        inputs = _input_keys(spec)
        reply = self._create(
            keys=[
                keys.job(job_id),
                keys.jobs_index(),
                keys.census(S.PENDING, spec.hardware, priority),
                # The facets never change; the status index follows each transition.
                keys.index("owner", owner),
                keys.index("status", JobStatus.PENDING.view),
                keys.index("model", model),
                keys.index("hardware", spec.hardware),
                keys.events(),
                keys.pending(owner),
                keys.pending_owners(),
                keys.wake(),
                keys.dispatched_by_owner(),
                keys.job(after or job_id),
                keys.running_limits(),
                keys.audit_log(),
                keys.input_refs(),
                *([keys.idempotency(owner, idempotency_key)] if idempotency_key else []),
            ],
            args=[
                job_id,
                repr(now),
                owner,
                pending_score(priority, now),
                "1" if wake else "",
                "" if max_queued is None else max_queued,
                counting,
                "1" if after else "",
                EVENTS_MAXLEN,
                "" if max_running is None else max_running,
                "" if audit is None else audit_max,
                2 * len(audit or ()),
                len(inputs),
                *(x for pair in (audit or {}).items() for x in pair),
                *inputs,
                *(x for pair in stored.items() for x in pair),
            ],
            client=client,
        )
        return stored, reply

    def create_batch_in(
        self,
        pipe: Pipeline,
        batch_id: str,
        owner: str,
        job_ids: list[str],
        idempotency_key: str = "",
    ) -> None:
        """Record a batch at the end of the transaction that creates its jobs (`create_in`
        on `pipe`): written only if they were. `idempotency_key`: the one its first job
        took, which then names the batch (a repeat's `taken` is the batch's id) until the
        batch goes (with its last job)."""
        fields = {
            "id": batch_id,
            "owner": owner,
            "created_at": repr(time.time()),
            "children": json.dumps(job_ids),
            "idempotency_key": idempotency_key,
        }
        self._create_batch(
            keys=[
                keys.batch(batch_id),
                keys.job(job_ids[-1]),
                *([keys.idempotency(owner, idempotency_key)] if idempotency_key else []),
            ],
            args=[batch_id, *(x for pair in fields.items() for x in pair)],
            client=pipe,
        )

    def get(self, job_id: str) -> dict[str, Any] | None:
        return _decode(self.redis.hgetall(keys.job(job_id)))

    def exists(self, job_id: str) -> bool:
        return bool(self.redis.exists(keys.job(job_id)))

    def delete(self, job_id: str) -> Deleted:
        """Delete a finished job's record, and queue its objects in storage (its outputs and
        thumbnails, and the input images no other job names) for the scheduler to delete.
        A job still queued or running is not deleted (`ACTIVE`)."""
        while True:
            record = self.get(job_id)
            if record is None:
                return Deleted.GONE
            if not record["status"].final:
                return Deleted.ACTIVE
            folders = [job_folder(job_id), thumbs_folder(job_id)]
            inputs = _input_keys(load_spec(record["spec"]))
            reply = self._delete(
                keys=[
                    keys.job(job_id),
                    keys.jobs_index(),
                    keys.events(),
                    keys.gallery(),
                    keys.trash(),
                    keys.input_refs(),
                    keys.counters(),
                ],
                args=[job_id, record["seq"], EVENTS_MAXLEN, *folders, *inputs],
            )
            if reply != b"changed":  # retried and finished again since it was read: anew
                return Deleted(reply.decode())

    def get_many(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """The records of `job_ids` in that order (missing ones left out), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(keys.job(job_id))
            found = pipe.execute()
        return [rec for raw in found if (rec := _decode(raw)) is not None]

    def fields_of(self, job_ids: list[str], names: tuple[str, ...]) -> list[dict[str, Any] | None]:
        """Some fields (`status` and `priority` among them) of each job, decoded like `get`'s,
        in one round trip; None for a job without a record."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.job(job_id), names)
            found = pipe.execute()
        records = []
        for values in found:
            raw = {n.encode(): v for n, v in zip(names, values, strict=True) if v is not None}
            records.append(_decode(raw) if b"status" in raw else None)
        return records

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        allowed_from: tuple[JobStatus, ...],
        fence: Fence | None = None,
        **fields: Any,
    ) -> bool:
        """Move a job to `to` if its status is one of `allowed_from` (and, when `fence` is
        given, its current attempt is `fence`: an attempt number, or `leases.token(attempt,
        worker)` for that attempt dispatched to that worker); set `fields` with it. False if
        refused.

        Asking for an edge that is not in TRANSITIONS is a programming error (ValueError)."""
        return self._run(job_id, to, _edge(to, allowed_from), fence, fields)

    def update(
        self, job_id: str, status: JobStatus, fence: Fence | None = None, **fields: Any
    ) -> bool:
        """Set fields on a job that is (still) in `status` (and attempt `fence`, when given)."""
        return self._run(job_id, status, "*", fence, fields)

    def transition_in(
        self,
        pipe: Pipeline,
        job_id: str,
        to: JobStatus,
        allowed_from: tuple[JobStatus, ...],
        fence: Fence | None = None,
        **fields: Any,
    ) -> None:
        """`transition`, queued on `pipe`: its answer (1 done, 0 refused) comes with the
        pipeline's, so a caller changes many records in one round trip."""
        self._run(job_id, to, _edge(to, allowed_from), fence, fields, pipe)

    def update_in(
        self,
        pipe: Pipeline,
        job_id: str,
        status: JobStatus,
        fence: Fence | None = None,
        **fields: Any,
    ) -> None:
        """`update`, queued on `pipe`."""
        self._run(job_id, status, "*", fence, fields, pipe)

    def _run(
        self,
        job_id: str,
        to: JobStatus,
        allowed: str,
        fence: Fence | None,
        fields: dict[str, Any],
        pipe: Pipeline | None = None,
    ) -> bool:
        keys_, args = _script_call(job_id, to, allowed, fence, fields)
        if pipe is not None:
            self._transition(keys=keys_, args=args, client=pipe)
            return True
        return bool(self._transition(keys=keys_, args=args))

    def rebuild_active(self) -> None:
        """Recount the busy workers and the owners' active jobs from the active-status sets,
        in one step (a farm upgraded from a version without them, or repaired)."""
        self._rebuild(
            keys=[
                keys.in_status(S.DISPATCHED),
                keys.in_status(S.RUNNING),
                keys.worker_jobs(),
                keys.owner_jobs(),
            ]
        )

    def set_progress(self, job_id: str, attempt: Fence, progress: float) -> bool:
        """Record progress of a running attempt; false once the attempt is no longer current."""
        return self.update(job_id, S.RUNNING, attempt, progress=f"{progress:.4f}")

    def ids_in(self, status: JobStatus) -> list[str]:
        return sorted(i.decode() for i in self.redis.smembers(keys.in_status(status)))

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        ids = self.redis.zrevrange(keys.jobs_index(), 0, limit - 1)
        records = (self.get(i.decode()) for i in ids)
        return [r for r in records if r is not None]
