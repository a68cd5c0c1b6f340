"""Every Redis key renderfarm writes, in one place."""

PREFIX = "rf"


def job(job_id: str) -> str:
    """Hash holding one job record."""
    return f"{PREFIX}:job:{job_id}"


def jobs_index() -> str:
    """Sorted set of job ids scored by creation time."""
    return f"{PREFIX}:jobs"
