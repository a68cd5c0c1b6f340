"""Every Redis key renderfarm writes, in one place."""

PREFIX = "rf"


def job(job_id: str) -> str:
    """Hash holding one job record."""
    return f"{PREFIX}:job:{job_id}"


def jobs_index() -> str:
    """Sorted set of job ids scored by creation time."""
    return f"{PREFIX}:jobs"


def in_status(status: str) -> str:
    """Set of the ids of jobs in an active status (`dispatched`, `running`)."""
    return f"{PREFIX}:status:{status}"


def pending(owner: str) -> str:
    """Sorted set of one owner's jobs waiting for dispatch, best first."""
    return f"{PREFIX}:pending:{owner}"


def pending_owners() -> str:
    """Sorted set of owners with pending jobs, scored by when they were last served."""
    return f"{PREFIX}:pending-owners"


def lease(job_id: str) -> str:
    """The running attempt's lease: `<attempt>:<worker>`, expiring unless renewed."""
    return f"{PREFIX}:lease:{job_id}"


def idempotency(owner: str, key: str) -> str:
    """Job id created for a client's Idempotency-Key."""
    return f"{PREFIX}:idem:{owner}:{key}"


def wake() -> str:
    """List the dispatcher blocks on; submissions push to it for a prompt dispatch."""
    return f"{PREFIX}:wake"


def dispatcher_lock() -> str:
    """Held by the one dispatcher process that may dispatch and reap."""
    return f"{PREFIX}:dispatcher"


def worker(name: str) -> str:
    """JSON heartbeat of one live worker; expires when the worker stops beating."""
    return f"{PREFIX}:worker:{name}"


def fleet_changed() -> str:
    """Set of workers whose cache changed since the dispatcher last looked (it pops them and
    re-reads just their heartbeats)."""
    return f"{PREFIX}:fleet:changed"


def workers_index() -> str:
    """Set of worker names that have beaten at some time (expired ones are pruned on read)."""
    return f"{PREFIX}:workers"


def worker_jobs() -> str:
    """Hash of worker name -> how many dispatched or running jobs name it (a dispatched job
    its `target`, a running one its `worker`): busy workers, kept by the records' Lua step."""
    return f"{PREFIX}:active:workers"


def owner_jobs() -> str:
    """Hash of owner -> how many of its jobs are dispatched or running (its running limit
    counts them), kept by the records' Lua step."""
    return f"{PREFIX}:active:owners"


def drain(name: str) -> str:
    """Set while a worker is draining: it finishes its job and takes no new ones."""
    return f"{PREFIX}:drain:{name}"


def worker_queue(name: str) -> str:
    """The Celery queue only this worker consumes (affinity dispatch)."""
    return f"worker.{name}"


def batch(batch_id: str) -> str:
    """Hash of a batch: its owner, creation time and child job ids."""
    return f"{PREFIX}:batch:{batch_id}"


def account(name: str) -> str:
    """Hash of one account: role, disabled, password hash, session epoch, limit overrides."""
    return f"{PREFIX}:account:{name}"


def accounts_index() -> str:
    """Set of every account name."""
    return f"{PREFIX}:accounts"


def token(token_id: str) -> str:
    """Hash of one API token: its account, label, SHA-256 of the secret, timestamps."""
    return f"{PREFIX}:token:{token_id}"


def token_by_hash(digest: str) -> str:
    """The id of the token whose secret has this SHA-256 hex digest (O(1) lookup)."""
    return f"{PREFIX}:token-hash:{digest}"


def account_tokens(name: str) -> str:
    """Set of the ids of one account's tokens."""
    return f"{PREFIX}:account-tokens:{name}"


def input_refs() -> str:
    """Hash of input image key (`inputs/<sha256>.png`) -> how many job records name it: the
    image is deleted from storage with the last of them."""
    return f"{PREFIX}:input-refs"


def trash() -> str:
    """List of the storage keys of deleted jobs' objects (a key ending in `/`: everything
    under it), written with the deletion and emptied by the scheduler's retention step."""
    return f"{PREFIX}:trash"


def trash_later() -> str:
    """Sorted set of trashed input images written too recently to delete, by the Unix time
    they may go: the retention step puts them back in the trash then."""
    return f"{PREFIX}:trash:later"


def audit_log() -> str:
    """Stream of audit entries (append-only, capped)."""
    return f"{PREFIX}:audit"


def secret_key() -> str:
    """The dashboard's Flask SECRET_KEY when no setting gives one, shared by every replica."""
    return f"{PREFIX}:secret-key"


def ratelimit_prefix() -> str:
    """Prefix of the password throttle's counters (failed checks per address and name)."""
    return f"{PREFIX}:ratelimit"


def running_limits() -> str:
    """Hash of owner -> how many of its jobs may run at once (its account's quota)."""
    return f"{PREFIX}:running-limits"


def events() -> str:
    """Stream of every job record change (job, status, progress, owner, seq), capped."""
    return f"{PREFIX}:events"


# --- The queue page's indexes (scheduler/records.py keeps them in its Lua steps) ---


def index(facet: str, value: str) -> str:
    """Sorted set of job ids scored by creation time, one per `owner`, client-facing
    `status` (queued, running, ...), `model` and requested `hardware` class."""
    return f"{PREFIX}:ix:{facet}:{value}"


def gallery(owner: str = "") -> str:
    """Sorted set of `<job id>:<output index>` of succeeded jobs scored by finish time: the
    team's (owner "") or one owner's."""
    return f"{PREFIX}:gallery:{owner}" if owner else f"{PREFIX}:gallery"


def render_times(hardware: str, timing: str) -> str:
    """List of the latest `render_s` of jobs of one timing class (model|WxH|steps, the
    record's `timing` field) on one hardware class, newest first (capped)."""
    return f"{PREFIX}:render-s:{hardware}|{timing}"


def webhooks() -> str:
    """Hash of account name -> webhook URL (written by the accounts, read by the notifier)."""
    return f"{PREFIX}:webhooks"


def notifier_last_id() -> str:
    """The id of the last job event the webhook notifier handled (it resumes after it)."""
    return f"{PREFIX}:notifier:last-id"


def notifier_lock() -> str:
    """Held by the one scheduler process whose notifier sends webhooks."""
    return f"{PREFIX}:notifier"


def scratch(token: str) -> str:
    """A query's intermediate sorted set (an intersection of indexes), deleted at once."""
    return f"{PREFIX}:scratch:{token}"


def sdapi_calls(name: str) -> str:
    """Set of the job ids the account's SD-WebUI calls are waiting for (progress, interrupt)."""
    return f"{PREFIX}:sdapi-calls:{name}"


def sdapi_options(name: str) -> str:
    """Hash of an account's SD-WebUI options (`/sdapi/v1/options`), values as JSON."""
    return f"{PREFIX}:sdapi-options:{name}"


# --- The farm's figures for /metrics and autoscaling (scheduler/census.py) ---


def census(status: str, worker_class: str, priority: str = "") -> str:
    """Sorted set of the jobs in one cell of the census, scored by when they entered it:
    pending jobs by the class they asked for and priority, dispatched and running ones by
    the class of their worker. The records' Lua step moves a job between cells."""
    cell = f"{PREFIX}:census:{status}:{worker_class}"
    return f"{cell}:{priority}" if priority else cell


def dispatched_by_owner() -> str:
    """Hash of owner -> how many of its jobs are dispatched (sent, not started): with its
    pending set, what its `max_queued` quota counts."""
    return f"{PREFIX}:census:dispatched-by-owner"


def counters() -> str:
    """Hash of farm-wide counters (finished jobs by outcome, dispatches, affinity)."""
    return f"{PREFIX}:counters"


def histogram(name: str, label: str) -> str:
    """Hash of one histogram series: a count per bucket index, `sum` and `count`."""
    return f"{PREFIX}:histogram:{name}:{label}"
