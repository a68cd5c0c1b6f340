"""Submission: a validated spec becomes a job record and a task on the right queue."""

from __future__ import annotations

import uuid
from typing import Any

from celery import Celery
from redis import Redis

from scheduler.celery_app import RUN_JOB, make_celery
from scheduler.records import JobRecords
from shared.config import Settings
from shared.jobspec import JobSpec
from shared.modelstore import find_model


class SubmitError(ValueError):
    """A spec that is well-formed but cannot be run (e.g. an unknown model)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def route(spec: JobSpec) -> str:
    """The queue a job goes to: its hardware class; `auto` runs on CPU for now."""
    return "cpu" if spec.hardware == "auto" else spec.hardware


class Scheduler:
    def __init__(self, settings: Settings, celery: Celery | None = None) -> None:
        self.settings = settings
        self.redis = Redis.from_url(settings.redis_url)
        self.records = JobRecords(self.redis)
        self.celery = celery or make_celery(settings)

    def submit(self, spec: JobSpec) -> dict[str, Any]:
        if find_model(spec.model, "checkpoint", self.settings.models_dir) is None:
            raise SubmitError("model", f"unknown model {spec.model!r}; see GET /api/v1/models")
        spec = spec.with_seed()
        job_id = uuid.uuid4().hex
        queue = route(spec)
        # Record first, so the worker always finds the record of a task it receives.
        record = self.records.create(job_id, spec, queue)
        try:
            self.celery.send_task(RUN_JOB, args=[job_id], queue=queue, task_id=job_id)
        except Exception:
            self.records.delete(job_id)
            raise
        return record
