"""Batches: one request for many images becomes many jobs that several workers share.

A batch is either a list of specs, or one spec whose `batch_count` is split into that
many jobs (each of `batch_size` images, seeds continuing as in a single job). The batch
record only lists its children; its status and progress are derived from theirs.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from scheduler.control import ConflictError, JobControl, KeyTaken
from scheduler.quotas import Quota
from shared import keys
from shared.jobspec import AnySpec, DiffusionSpec
from shared.vocabulary import FINAL, QUEUED, JobStatus, Priority

BATCH_KEY = "batch:"  # before a batch's Idempotency-Key: a job's and a batch's never meet


def split(spec: AnySpec) -> list[AnySpec]:
    """One job per batch of a spec with batch_count > 1; seeds continue across them."""
    if not isinstance(spec, DiffusionSpec) or spec.batch_count == 1:
        return [spec]
    spec = spec.with_seed()
    assert spec.seed is not None
    return [
        spec.model_copy(update={"batch_count": 1, "seed": seed})
        for seed in spec.image_seeds()[:: spec.batch_size]
    ]


def aggregate(children: list[dict[str, Any]]) -> tuple[str, float]:
    """A batch's status (as clients see a job's) and progress from its jobs'."""
    statuses = [c["status"] for c in children]
    progress = sum(
        1.0 if s == JobStatus.SUCCEEDED else c["progress"]
        for s, c in zip(statuses, children, strict=True)
    ) / len(children)
    if JobStatus.RUNNING in statuses:
        return JobStatus.RUNNING, progress
    if any(s not in FINAL for s in statuses):  # some wait: started if any did not
        started = any(s != JobStatus.PENDING for s in statuses)
        return (JobStatus.RUNNING if started else QUEUED), progress
    for final in (JobStatus.FAILED, JobStatus.CANCELED):
        if final in statuses:
            return final, progress
    return JobStatus.SUCCEEDED, progress


class Batches:
    def __init__(self, jobs: JobControl) -> None:
        self.jobs = jobs
        self.redis = jobs.redis

    def submit(
        self,
        specs: list[AnySpec],
        owner: str,
        priority: Priority,
        quota: Quota | None = None,
        submitted_by: str = "",
        audit: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Queue every job of `specs` (each split by its batch_count) as one batch, or none;
        returns (batch, created). `audit`: the submission's audit log entry, its target set
        to the batch and its detail to the number of jobs, written with them. With an
        idempotency key, a repeat gets the batch the first request made (the keys of
        batches kept apart from those of single jobs: `BATCH_KEY`)."""
        # Check everything first, so a bad spec anywhere, or a quota, queues nothing.
        children = [child for spec in specs for child in split(spec)]
        if quota is not None:
            self.jobs.check_hardware(owner, quota, specs)
        prepared = [self.jobs.prepare(child) for child in children]
        batch_id = uuid.uuid4().hex
        if audit is not None:
            audit = {**audit, "target": batch_id, "detail": f"{len(children)} jobs"}
        try:
            self.jobs.enqueue(
                prepared,
                owner,
                priority,
                quota,
                submitted_by,
                batch=batch_id,
                audit=audit,
                idempotency_key=BATCH_KEY + idempotency_key if idempotency_key else "",
            )
        except KeyTaken as first:
            batch = self.get(first.made)
            if batch is None:  # deleted as this request came (deleting frees the key)
                raise ConflictError("the batch of this Idempotency-Key was just deleted") from None
            return batch, False
        return self.get(batch_id), True  # type: ignore[return-value]

    def get(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(keys.batch(batch_id))
        if not raw:
            return None
        batch = {k.decode(): v.decode() for k, v in raw.items()}
        ids = json.loads(batch["children"])
        children = self.jobs.records.get_many(ids)  # one round trip, not one per job
        if not children:
            return None  # its jobs were deleted (the last one's deletion takes the batch)
        status, progress = aggregate(children)
        return {
            "id": batch_id,
            "owner": batch["owner"],
            "created_at": float(batch["created_at"]),
            "status": status,
            "progress": progress,
            "jobs": children,
        }

    def cancel(self, batch_id: str) -> dict[str, Any] | None:
        batch = self.get(batch_id)
        if batch is None:
            return None
        for job in batch["jobs"]:
            if not job["status"].final:
                self.jobs.cancel(job["id"])
        return self.get(batch_id)
