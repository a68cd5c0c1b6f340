"""Job control: a validated spec becomes a pending job; users steer their jobs.

(The `renderfarm scheduler` process, which decides where jobs run, is the Dispatcher in
scheduler/dispatcher.py.)
"""

from __future__ import annotations

import io
import secrets
import threading
import time
from typing import Any

from celery import Celery
from PIL import Image, ImageOps

from scheduler.celery_app import make_celery
from scheduler.pending import PendingJobs
from scheduler.quotas import Quota, QuotaExceeded
from scheduler.records import Deleted, JobRecords, as_record, refused, taken
from shared import keys
from shared.config import Settings, redis_client
from shared.jobspec import (
    INPUT_KEY,
    AnySpec,
    UpscaleSpec,
    decode_image,
    input_key,
    output_size_error,
    parse_spec,
    target_size,
)
from shared.modelstore import ModelStore, cross_attention_label, open_model_store
from shared.storage import ObjectNotFound, Storage, open_storage
from shared.vocabulary import AUTO, Hardware, JobStatus, Priority

_last_ns = 0
_id_lock = threading.Lock()


def new_job_id() -> str:
    """32 hex digits, time-ordered (like a UUIDv7): the nanosecond clock, strictly increasing
    in this process, then 64 random bits. Pending sets order an owner's jobs of one priority
    by creation millisecond, and equal scores by member: so jobs submitted within the same
    millisecond still run in the order they came."""
    global _last_ns
    with _id_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        stamp = _last_ns
    return f"{stamp:016x}{secrets.randbits(64):016x}"


class SubmitError(ValueError):
    """A spec that is well-formed but cannot be run (e.g. an unknown model)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ConflictError(RuntimeError):
    """The job is not in a state that allows this action."""


JOB_KEY = "job:"  # before a job's Idempotency-Key (a batch's: `batches.BATCH_KEY`)


class KeyTaken(Exception):
    """The Idempotency-Key names what an earlier request made (`made`: a job's id, or a
    batch's): nothing was made."""

    def __init__(self, made: str) -> None:
        super().__init__(made)
        self.made = made


CANCELABLE = (JobStatus.PENDING, JobStatus.DISPATCHED)  # to CANCELED at once; RUNNING: asked


def canceled_now() -> dict[str, Any]:
    """The fields a job canceled now gets with its status."""
    return {"finished_at": time.time(), "error": "canceled"}


def priority_of(value: object) -> Priority:
    """A client's priority, or a SubmitError naming the field."""
    try:
        return Priority(value)
    except ValueError:
        raise SubmitError("priority", f"must be one of {', '.join(Priority)}") from None


PNG_MODES = ("1", "L", "LA", "I;16", "P", "RGB", "RGBA")


def stored_pixels(image: Image.Image) -> Image.Image:
    """What a JPEG or WebP input is stored as: upright (a photo's EXIF orientation applied
    now, since the PNG will not carry it) and in a mode a PNG holds (a CMYK JPEG as RGB)."""
    image = ImageOps.exif_transpose(image)
    if image.mode not in PNG_MODES:
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    return image


class JobControl:
    def __init__(
        self,
        settings: Settings,
        celery: Celery | None = None,
        storage: Storage | None = None,
        models: ModelStore | None = None,
    ) -> None:
        self.settings = settings
        # Every submission looks its models up here (an object store's listing is kept
        # in memory for a few seconds: no request to the store per submission).
        self.models = models or open_model_store(settings)
        self.redis = redis_client(settings)
        self.records = JobRecords(self.redis)
        self.pending = PendingJobs(self.redis)
        self.celery = celery or make_celery(settings)
        self.storage = storage or open_storage(settings)

    # -- submission ---------------------------------------------------------------------------

    def check_models(self, spec: AnySpec) -> None:
        """Every model is in the store, and every ControlNet fits the checkpoint (one for
        SD 1.x on an SDXL checkpoint would only fail on the worker, a matrix shape error)."""
        found = []
        for field, family, name in spec.required_models():
            info = self.models.find(name, family)
            if info is None:
                raise SubmitError(field, f"unknown {family} {name!r}; see GET /api/v1/models")
            found.append((field, info))
        checkpoint = next((i.cross_attention for _, i in found if i.family == "checkpoint"), None)
        for field, info in found:
            width = info.cross_attention
            if info.family == "controlnet" and width and checkpoint and width != checkpoint:
                raise SubmitError(
                    field,
                    f"controlnet {info.name!r} is for {cross_attention_label(width)} "
                    f"checkpoints; {spec.model!r} is {cross_attention_label(checkpoint)}",
                )

    def stash_inputs(self, spec: AnySpec) -> AnySpec:
        """Store every base64 input image (content-addressed, as PNG: a PNG byte for byte as
        sent, since decoding and encoding it again costs 30 ms at 512x512 and 150 ms at
        1024x1024; a JPEG or WebP converted, see `stored_pixels`); the spec keeps the key.

        An upscale's output size depends on its image: it is checked here, against
        `max_output_pixels`, before anything is stored."""
        if not spec.image_fields():  # nothing to store: no second validation
            return spec
        data = spec.model_dump()
        sizes: dict[tuple[str, ...], tuple[int, int]] = {}
        pngs: dict[str, bytes] = {}  # by key: each stored once, its hash taken once
        for path in spec.image_fields():
            *parents, last = path
            holder: Any = data
            for part in parents:
                holder = holder[int(part)] if isinstance(holder, list) else holder[part]
            value = holder[last]
            if INPUT_KEY.match(value):
                try:
                    raw = self.storage.get(value)
                except ObjectNotFound:
                    raise SubmitError(
                        ".".join(path),
                        f"no stored input {value!r} (deleted with the last job that named it,"
                        " or never stored): send the image itself",
                    ) from None
                # Written again, as a new image is: the retention step never deletes an input
                # written in the last minutes, so not one this job is about to name.
                pngs[value] = raw
                with Image.open(io.BytesIO(raw)) as im:
                    sizes[path] = im.size
                continue
            raw = decode_image(value)
            with Image.open(io.BytesIO(raw)) as im:
                if im.format == "PNG":  # verified as the spec was parsed: stored as sent
                    sizes[path] = im.size
                else:
                    upright = stored_pixels(im)
                    sizes[path] = upright.size
                    buf = io.BytesIO()
                    upright.save(buf, format="PNG")
                    raw = buf.getvalue()
            holder[last] = input_key(raw)
            pngs[holder[last]] = raw
        if isinstance(spec, UpscaleSpec):
            self.check_upscale_size(spec, *sizes[("image",)])
        for key, png in pngs.items():
            self.storage.put(key, png, "image/png")
        return parse_spec(data, self.settings)

    def check_upscale_size(self, spec: UpscaleSpec, width: int, height: int) -> None:
        """An upscale's output is bounded like every other output (a 16x scale of a large
        image would hold a worker for an hour and exhaust its memory)."""
        size = target_size(width, height, spec.scale, spec.width, spec.height)
        field = "scale" if spec.scale is not None else "width"
        reason = output_size_error(*size, self.settings)
        if reason:
            raise SubmitError(field, f"{width}x{height} upscaled {reason}")

    def check_hardware(self, owner: str, quota: Quota, specs: list[AnySpec]) -> None:
        """Refuse (QuotaExceeded) specs for hardware classes `owner` may not use. (Its
        `max_queued` is checked where the jobs are recorded, in the same step.)"""
        for spec in specs:
            if spec.hardware == AUTO and not quota.hardware:
                raise QuotaExceeded("hardware", f"{owner} may not use any hardware class")
            if spec.hardware != AUTO and spec.hardware not in quota.hardware:
                allowed = ", ".join(quota.hardware) or "none"
                raise QuotaExceeded(
                    "hardware", f"{owner} may not use {spec.hardware} workers (allowed: {allowed})"
                )

    def submit(
        self,
        spec: AnySpec,
        owner: str = "anonymous",
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
        quota: Quota | None = None,
        submitted_by: str = "",
        audit: dict[str, str] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Record the job and queue it for dispatch; returns (record, created).

        With an idempotency key, a retried request gets the job the first one created (the
        record step sees the key: repeats racing each other make one job).
        With a quota, a job over it is refused (QuotaExceeded) and nothing is recorded;
        `submitted_by` is the account submitting on the owner's behalf; `audit`: the audit
        log entry of the submission, its target set to the job and written with it.
        """
        job_id = new_job_id()
        if quota is not None:
            self.check_hardware(owner, quota, [spec])
        spec = self.prepare(spec)
        try:
            made = self.enqueue(
                [spec],
                owner,
                priority,
                quota,
                submitted_by,
                [job_id],
                audit=None if audit is None else {**audit, "target": job_id},
                idempotency_key=JOB_KEY + idempotency_key if idempotency_key else "",
            )
        except KeyTaken as first:
            record = self.records.get(first.made)
            if record is None:  # deleted as this request came (deleting frees the key)
                raise ConflictError("the job of this Idempotency-Key was just deleted") from None
            return record, False
        return made[0], True

    def prepare(self, spec: AnySpec) -> AnySpec:
        """Everything that can refuse a spec: its models, its inputs (stored), its output
        size; then its seed is fixed."""
        self.check_models(spec)
        return self.stash_inputs(spec).with_seed()

    def enqueue(
        self,
        specs: list[AnySpec],
        owner: str,
        priority: Priority,
        quota: Quota | None = None,
        submitted_by: str = "",
        job_ids: list[str] | None = None,
        batch: str = "",
        audit: dict[str, str] | None = None,
        idempotency_key: str = "",
    ) -> list[dict[str, Any]]:
        """Record prepared specs' jobs (and `batch`, if given, with them) and queue them for
        dispatch: all or, over the quota's `max_queued` (QuotaExceeded), none; an
        `idempotency_key` that names a job or batch already: none (KeyTaken). The records
        are not read back; the owner's running limit and the audit entry, if given, are
        written with them."""
        job_ids = job_ids or [new_job_id() for _ in specs]
        hardware = quota.hardware if quota is not None else tuple(Hardware)
        max_queued, max_running = (quota.max_queued, quota.max_running) if quota else (None, None)
        one = len(specs) == 1 and not batch
        # One job: one EVALSHA (a pipeline holding a script would first send SCRIPT EXISTS).
        # Several, or a batch: a transaction, whose first job is checked for the whole batch
        # (quota and key) and each later one needs the one before it (so it is all or
        # nothing), the batch's record last.
        with self.redis.pipeline() as pipe:
            made = [
                self.records.create_in(
                    self.redis if one else pipe,
                    job_id,
                    spec,
                    owner,
                    priority,
                    submitted_by,
                    hardware,
                    batch,
                    max_queued=max_queued if i == 0 else None,
                    counting=len(specs) - i,
                    after=job_ids[i - 1] if i else None,
                    max_running=max_running if i == 0 else None,
                    audit=audit if i == 0 else None,  # the first job stands for the batch
                    audit_max=self.settings.audit_max_entries,
                    idempotency_key=idempotency_key if i == 0 else "",
                )
                for i, (job_id, spec) in enumerate(zip(job_ids, specs, strict=True))
            ]
            if batch:
                self.records.create_batch_in(pipe, batch, owner, job_ids, idempotency_key)
            first = made[0][1] if one else pipe.execute()[0]
        earlier = taken(first)
        queued = None if earlier else refused(first)
        if earlier or queued is not None:
            # Their images were stored by `prepare` and no job names them: the trash (the
            # retention step keeps any another job names, and fresh ones for a while).
            images = {key for spec in specs for key in spec.images().values()}
            if images:
                self.redis.rpush(keys.trash(), *sorted(images))
        if earlier:
            raise KeyTaken(earlier)
        if queued is not None:
            raise QuotaExceeded(
                "max_queued", f"{owner} has {queued} jobs queued; its limit is {max_queued}"
            )
        return [as_record(fields) for fields, _ in made]

    # -- control ------------------------------------------------------------------------------

    def _get(self, job_id: str) -> dict[str, Any]:
        record = self.records.get(job_id)
        if record is None:
            raise KeyError(job_id)
        return record

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job (it never runs) or ask a running one to stop at its next step."""
        rec = self._get(job_id)
        if rec["status"] == JobStatus.PENDING:
            self.pending.remove(job_id, rec["owner"])
        if self.records.transition(job_id, JobStatus.CANCELED, CANCELABLE, **canceled_now()):
            return self._get(job_id)
        if not self.records.update(job_id, JobStatus.RUNNING, cancel_requested=1):
            raise ConflictError(f"job {job_id} is {rec['status']}; only active jobs can cancel")
        return self._get(job_id)

    def cancel_all(self, owner: str, chunk: int = 500) -> int:
        """Cancel every unfinished job of `owner` (its account was disabled); how many. Its
        queued jobs a pipeline of `chunk` at a time (thousands take a second, not minutes)."""
        queued = [i.decode() for i in self.redis.zrange(keys.pending(owner), 0, -1)]
        active = [
            job_id
            for status in (JobStatus.DISPATCHED, JobStatus.RUNNING)
            for job_id in self.records.ids_in(status)
            if self.owner_of(job_id) == owner
        ]
        canceled = 0
        for at in range(0, len(queued), chunk):
            part = queued[at : at + chunk]
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in part:
                    self.pending.remove_in(pipe, job_id, owner)
                    self.records.transition_in(
                        pipe, job_id, JobStatus.CANCELED, CANCELABLE, **canceled_now()
                    )
                done = pipe.execute()[1::2]
            canceled += sum(map(bool, done))
            # Refused: dispatched and started meanwhile (asked to stop below), or finished.
            active += [job_id for job_id, ok in zip(part, done, strict=True) if not ok]
        for job_id in dict.fromkeys(active):  # once each: one may have been in both lists
            try:
                self.cancel(job_id)
                canceled += 1
            except (ConflictError, KeyError):
                pass  # finished meanwhile
        return canceled

    def owner_of(self, job_id: str) -> str | None:
        owner = self.redis.hget(keys.job(job_id), "owner")
        return owner.decode() if owner else None

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
            now = self._get(job_id)  # KeyError (404) if it was deleted meanwhile
            raise ConflictError(
                f"job {job_id} is {now['status']}; only finished jobs that "
                "did not succeed can be retried"
            )
        self.pending.add(job_id, rec["owner"], rec["priority"], rec["created_at"])
        return self._get(job_id)

    def delete(self, job_id: str) -> None:
        """Delete a finished job: its record at once, its outputs from storage soon after (the
        scheduler's retention step empties the trash). KeyError: no such job; ConflictError:
        it is still queued or running (cancel it first)."""
        done = self.records.delete(job_id)
        if done is Deleted.GONE:
            raise KeyError(job_id)
        if done is Deleted.ACTIVE:
            raise ConflictError(f"job {job_id} is still queued or running; cancel it first")

    def set_priority(self, job_id: str, priority: Priority) -> dict[str, Any]:
        rec = self._get(job_id)
        if not self.records.update(job_id, JobStatus.PENDING, priority=priority) or not (
            self.pending.reprioritize(job_id, rec["owner"], priority, rec["created_at"])
        ):
            raise ConflictError(f"job {job_id} is no longer waiting; its priority is fixed")
        return self._get(job_id)
