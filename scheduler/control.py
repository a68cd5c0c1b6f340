"""Job control: a validated spec becomes a pending job; users steer their jobs.

(The `renderfarm scheduler` process, which decides where jobs run, is the Dispatcher in
scheduler/dispatcher.py.)
"""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

from celery import Celery
from PIL import Image

from scheduler.celery_app import make_celery
from scheduler.pending import PendingJobs
from scheduler.records import JobRecords
from shared import keys
from shared.config import Settings, redis_client
from shared.jobspec import INPUT_KEY, AnySpec, decode_image, input_key, parse_spec
from shared.modelstore import find_model
from shared.storage import Storage, open_storage
from shared.vocabulary import JobStatus, Priority

IDEMPOTENCY_TTL_S = 24 * 3600


class SubmitError(ValueError):
    """A spec that is well-formed but cannot be run (e.g. an unknown model)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ConflictError(RuntimeError):
    """The job is not in a state that allows this action."""


def priority_of(value: object) -> Priority:
    """A client's priority, or a SubmitError naming the field."""
    try:
        return Priority(value)
    except ValueError:
        raise SubmitError("priority", f"must be one of {', '.join(Priority)}") from None


class JobControl:
    def __init__(
        self, settings: Settings, celery: Celery | None = None, storage: Storage | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis_client(settings.redis_url)
        self.records = JobRecords(self.redis)
        self.pending = PendingJobs(self.redis)
        self.celery = celery or make_celery(settings)
        self.storage = storage or open_storage(settings)

    # -- submission ---------------------------------------------------------------------------

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
        return parse_spec(data, self.settings)

    def submit(
        self,
        spec: AnySpec,
        owner: str = "anonymous",
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Record the job and queue it for dispatch; returns (record, created).

        With an idempotency key, a retried request gets the job the first one created.
        """
        job_id = uuid.uuid4().hex
        if idempotency_key:
            idem = keys.idempotency(owner, idempotency_key)
            if not self.redis.set(idem, job_id, nx=True, ex=IDEMPOTENCY_TTL_S):
                return self._existing(self.redis.get(idem).decode()), False
        try:
            self.check_models(spec)
            spec = self.stash_inputs(spec).with_seed()
        except Exception:
            if idempotency_key:
                self.redis.delete(keys.idempotency(owner, idempotency_key))
            raise
        record = self.records.create(job_id, spec, owner, priority)
        self.pending.add(job_id, owner, priority, record["created_at"])
        return record, True

    def _existing(self, job_id: str, wait_s: float = 5.0) -> dict[str, Any]:
        """The job an earlier request with the same key created (it may be a moment away)."""
        deadline = time.monotonic() + wait_s
        while (record := self.records.get(job_id)) is None:
            if time.monotonic() > deadline:
                raise ConflictError("the first request with this Idempotency-Key failed")
            time.sleep(0.02)
        return record

    # -- control ------------------------------------------------------------------------------

    def _get(self, job_id: str) -> dict[str, Any]:
        record = self.records.get(job_id)
        if record is None:
            raise KeyError(job_id)
        return record

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job (it never runs) or ask a running one to stop at its next step."""
        rec = self._get(job_id)
        now = time.time()
        if rec["status"] == JobStatus.PENDING:
            self.pending.remove(job_id, rec["owner"])
        if self.records.transition(
            job_id,
            JobStatus.CANCELED,
            (JobStatus.PENDING, JobStatus.DISPATCHED),
            finished_at=now,
            error="canceled",
        ):
            return self._get(job_id)
        if not self.records.update(job_id, JobStatus.RUNNING, cancel_requested=1):
            raise ConflictError(f"job {job_id} is {rec['status']}; only active jobs can cancel")
        return self._get(job_id)

    def retry(self, job_id: str) -> dict[str, Any]:
        """Run a failed or canceled job again, as a fresh submission of the same spec."""
        rec = self._get(job_id)
        if not self.records.transition(
            job_id,
            JobStatus.PENDING,
            (JobStatus.FAILED, JobStatus.CANCELED),
            attempts=0,
            error="",
            note="retried",
            outputs=[],
            progress=0.0,
            cancel_requested=0,
            queue="",
            target="",
            eligible_at=time.time(),
        ):
            raise ConflictError(
                f"job {job_id} is {rec['status']}; only finished jobs that "
                "did not succeed can be retried"
            )
        self.pending.add(job_id, rec["owner"], rec["priority"], rec["created_at"])
        return self._get(job_id)

    def set_priority(self, job_id: str, priority: Priority) -> dict[str, Any]:
        rec = self._get(job_id)
        if not self.records.update(job_id, JobStatus.PENDING, priority=priority) or not (
            self.pending.reprioritize(job_id, rec["owner"], priority, rec["created_at"])
        ):
            raise ConflictError(f"job {job_id} is no longer waiting; its priority is fixed")
        return self._get(job_id)
