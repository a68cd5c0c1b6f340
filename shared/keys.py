"""Every Redis key renderfarm writes, in one place."""

PREFIX = "rf"


def job(job_id: str) -> str:
    """Hash holding one job record."""
    return f"{PREFIX}:job:{job_id}"


def jobs_index() -> str:
    """Sorted set of job ids scored by creation time."""
    return f"{PREFIX}:jobs"


def worker(name: str) -> str:
    """JSON heartbeat of one live worker; expires when the worker stops beating."""
    return f"{PREFIX}:worker:{name}"


def workers_index() -> str:
    """Set of worker names that have beaten at some time (expired ones are pruned on read)."""
    return f"{PREFIX}:workers"
