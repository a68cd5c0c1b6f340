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


def workers_index() -> str:
    """Set of worker names that have beaten at some time (expired ones are pruned on read)."""
    return f"{PREFIX}:workers"


def drain(name: str) -> str:
    """Set while a worker is draining: it finishes its job and takes no new ones."""
    return f"{PREFIX}:drain:{name}"


def worker_queue(name: str) -> str:
    """The Celery queue only this worker consumes (affinity dispatch)."""
    return f"worker.{name}"


def batch(batch_id: str) -> str:
    """Hash of a batch: its owner, creation time and child job ids."""
    return f"{PREFIX}:batch:{batch_id}"
