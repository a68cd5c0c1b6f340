"""Submission: a validated spec becomes a job record and a task on the right queue."""

from __future__ import annotations

import io
import uuid
from typing import Any

from celery import Celery
from PIL import Image
from redis import Redis

from scheduler.celery_app import RUN_JOB, make_celery
from scheduler.records import JobRecords
from shared.config import Settings
from shared.jobspec import INPUT_KEY, AnySpec, decode_image, input_key, parse_spec
from shared.modelstore import find_model
from shared.storage import Storage, open_storage


class SubmitError(ValueError):
    """A spec that is well-formed but cannot be run (e.g. an unknown model)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def route(spec: AnySpec) -> str:
    """The queue a job goes to: its hardware class; `auto` runs on CPU for now."""
    return "cpu" if spec.hardware == "auto" else spec.hardware


class Scheduler:
    def __init__(
        self, settings: Settings, celery: Celery | None = None, storage: Storage | None = None
    ) -> None:
        self.settings = settings
        self.redis = Redis.from_url(settings.redis_url)
        self.records = JobRecords(self.redis)
        self.celery = celery or make_celery(settings)
        self.storage = storage or open_storage(settings)

    def check_models(self, spec: AnySpec) -> None:
        for field, family, name in spec.required_models():
            if find_model(name, family, self.settings.models_dir) is None:
                raise SubmitError(field, f"unknown {family} {name!r}; see GET /api/v1/models")

    def stash_inputs(self, spec: AnySpec) -> AnySpec:
        """Store every base64 input image (as PNG, content-addressed); the spec keeps the key."""
        data = spec.model_dump()
        for path in spec.image_fields():
            *parents, last = path
            holder: Any = data
            for part in parents:
                holder = holder[int(part)] if isinstance(holder, list) else holder[part]
            value = holder[last]
            if INPUT_KEY.match(value):
                if not self.storage.exists(value):
                    raise SubmitError(".".join(path), f"no stored input {value!r}")
                continue
            with Image.open(io.BytesIO(decode_image(value))) as im:
                buf = io.BytesIO()
                im.save(buf, format="PNG")
            png = buf.getvalue()
            holder[last] = input_key(png)
            self.storage.put(holder[last], png, "image/png")
        return parse_spec(data)

    def submit(self, spec: AnySpec) -> dict[str, Any]:
        self.check_models(spec)
        spec = self.stash_inputs(spec).with_seed()
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
