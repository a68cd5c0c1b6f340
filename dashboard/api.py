"""REST API v1: submit jobs, read their records and outputs, steer jobs and workers.

Every route names the role it needs (`require`); steering a job also needs it to be the
caller's own, unless the caller is an operator. The owner of a job is the caller's account.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, url_for
from pydantic import ValidationError

from dashboard import farm, thumbnails
from dashboard.accounts import Account, Role
from dashboard.auth import audit_entry, audit_event, current_account, require
from scheduler.batches import Batches
from scheduler.control import ConflictError, SubmitError, priority_of
from scheduler.fleet import drain, is_live, live_workers
from scheduler.listing import JobQuery, find_jobs, gallery
from scheduler.positions import QueueView, stages
from scheduler.quotas import QuotaExceeded
from shared.jobspec import AnySpec, field_errors, load_spec, parse_spec
from shared.storage import ObjectNotFound
from shared.vocabulary import AUTO, Hardware, Priority, StatusView

api = Blueprint("api", __name__)
MAX_BATCH_SPECS = 1000
MAX_PER_PAGE = 200
MAX_PAGE = 1_000_000  # 200 million jobs deep: past any farm, and Redis's offsets stay 64-bit


class BadRequest(Exception):
    """A request refused before anything runs: `status` with `errors: [{field, reason}]`."""

    def __init__(self, status: int, field: str, reason: str, more: list | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.errors = [{"field": field, "reason": reason}, *(more or [])]


@api.errorhandler(BadRequest)
def _bad_request(exc: BadRequest):
    return jsonify(error="invalid request", errors=exc.errors), exc.status


@api.errorhandler(ValidationError)
def _invalid_spec(exc: ValidationError):
    return jsonify(error="invalid job spec", errors=field_errors(exc)), 422


@api.errorhandler(SubmitError)
def _unrunnable(exc: SubmitError):
    return jsonify(
        error="invalid job spec", errors=[{"field": exc.field, "reason": exc.reason}]
    ), 422


@api.errorhandler(QuotaExceeded)
def _over_quota(exc: QuotaExceeded):
    return jsonify(error=f"over quota: {exc.reason}", limit=exc.limit), 429


@api.errorhandler(ConflictError)
def _conflict(exc: ConflictError):
    return jsonify(error=str(exc)), 409


def json_body(optional: bool = False) -> dict[str, Any]:
    """The request's JSON object, or BadRequest (400) naming what is wrong with it;
    `optional`: an empty body is {}."""
    if optional and not request.get_data(cache=True):
        return {}
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # e.g. 100,000 nested brackets
        raise BadRequest(400, "body", "JSON nested too deeply") from None
    if body is None:
        raise BadRequest(400, "body", "not a JSON document")
    if not isinstance(body, dict):
        raise BadRequest(400, "body", "must be a JSON object")
    return body


def _queue() -> QueueView:
    """The queue as this request sees it, read once however many jobs it shows."""
    if "queue_view" not in g:
        g.queue_view = QueueView(farm.jobs().redis)
    return g.queue_view


def output_view(job_id: str, index: int, key: str) -> dict[str, Any]:
    return {
        "index": index,
        "key": key,
        "url": url_for("api.job_output", job_id=job_id, index=index),
        "thumbnail_url": url_for("api.job_thumbnail", job_id=job_id, index=index),
    }


def job_view(record: dict[str, Any], standing: bool = True) -> dict[str, Any]:
    """A job record as clients see it. Without `standing` (the reply to a submission), no
    queue position or ETA: they read the whole queue, and a submission must cost the same
    however long the queue is; the job's own address (Location) has them."""
    queue = _queue() if standing else None
    outputs = [output_view(record["id"], i, key) for i, key in enumerate(record.get("outputs", []))]
    return {
        "id": record["id"],
        "status": record["status"].view,
        "state": record["status"],
        "waiting": record.get("waiting") or None,
        "note": record.get("note") or None,
        "owner": record["owner"],
        "submitted_by": record.get("submitted_by") or record["owner"],
        "priority": record["priority"],
        "attempts": record["attempts"],
        "progress": record["progress"],
        "spec": record["spec"],
        "seeds": record["seeds"],
        "queue": record["queue"],
        "worker": record.get("worker"),
        "hardware": record.get("ran_on") or None,  # the class it ran on
        "error": record.get("error"),
        "outputs": outputs,
        "manifest": record.get("manifest"),
        "batch": record.get("batch") or None,
        "queue_position": queue.position(record) if queue else None,
        "eta_s": queue.eta_s(record) if queue else None,
        "render_s": record.get("render_s"),
        "attempts_history": record.get("history", []),
        "stages": stages(record),
        "created_at": record["created_at"],
        "dispatched_at": record.get("dispatched_at"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
    }


def _me() -> Account:
    account = current_account()
    assert account is not None, "the view is guarded by require()"
    return account


def _owner(body: dict[str, Any]) -> tuple[Account, str]:
    """Whose job this is: the caller's, or (operators and admins only) the account the body's
    `owner` names; and who submitted it on that account's behalf ("" if the owner did)."""
    me, asked = _me(), body.pop("owner", None)
    if asked is None or asked == me.name:
        return me, ""
    if not me.role.allows(Role.OPERATOR):
        raise BadRequest(
            422,
            "owner",
            "the owner of a job is you; only operators and admins "
            "may submit on behalf of another account",
        )
    owner = farm.accounts().get(str(asked))
    if owner is None or owner.disabled:
        raise BadRequest(422, "owner", f"no active account {asked!r}")
    return owner, me.name


def _submission(body: dict[str, Any]) -> tuple[Account, str, Priority]:
    owner, submitted_by = _owner(body)
    try:
        priority = priority_of(body.pop("priority", Priority.NORMAL))
    except SubmitError as exc:
        raise BadRequest(422, exc.field, exc.reason) from None
    return owner, submitted_by, priority


IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")  # as Stripe's: 255 at most


def idempotency_key() -> str | None:
    """The request's Idempotency-Key header, if sent: a repeat of a submission with the same
    key (from the same owner, within a day) gets what the first one made."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        reason = "must be 1 to 255 visible ASCII characters (spaces allowed)"
        raise BadRequest(422, "Idempotency-Key", reason)
    return key


@api.post("/jobs")
@require(Role.MEMBER)
def submit_job():
    body = json_body()
    owner, submitted_by, priority = _submission(body)  # beside the spec, not part of it
    spec = parse_spec(body, farm.settings())
    record, created = farm.jobs().submit(
        spec,
        owner.name,
        priority,
        idempotency_key(),
        quota=farm.accounts().limits(owner),
        submitted_by=submitted_by,
        audit=audit_entry("job.submit", detail=f"owner {owner.name}" if submitted_by else ""),
    )
    location = url_for("api.get_job", job_id=record["id"])
    return (
        jsonify(job_view(record, standing=False)),
        202 if created else 200,
        {"Location": location},
    )


def _steerable(job_id: str) -> dict[str, Any] | tuple[Response, int]:
    """The job, if it exists and the caller may steer it (its own, or any for an operator)."""
    record = farm.jobs().records.get(job_id)
    if record is None:
        return jsonify(error=f"no job {job_id!r}"), 404
    me = _me()
    if record["owner"] != me.name and not me.role.allows(Role.OPERATOR):
        return jsonify(
            error=f"job {job_id} is {record['owner']}'s; only its owner or an operator may steer it"
        ), 403
    return record


def _steer(job_id: str, action: str, run) -> Any:
    found = _steerable(job_id)
    if isinstance(found, tuple):
        return found
    try:
        record = run(job_id)
    except KeyError:
        return jsonify(error=f"no job {job_id!r}"), 404  # deleted meanwhile
    audit_event(f"job.{action}", job_id)
    return jsonify(job_view(record))


@api.post("/jobs/<job_id>/cancel")
@require(Role.MEMBER)
def cancel_job(job_id: str):
    return _steer(job_id, "cancel", farm.jobs().cancel)


@api.post("/jobs/<job_id>/retry")
@require(Role.MEMBER)
def retry_job(job_id: str):
    return _steer(job_id, "retry", farm.jobs().retry)


@api.delete("/jobs/<job_id>")
@require(Role.MEMBER)
def delete_job(job_id: str):
    """A finished job, its outputs and thumbnails, and the input images no other job names:
    gone (the record at once, the objects soon after). 409 while it is queued or running."""
    found = _steerable(job_id)
    if isinstance(found, tuple):
        return found
    try:
        farm.jobs().delete(job_id)
    except KeyError:
        return jsonify(error=f"no job {job_id!r}"), 404  # deleted meanwhile
    audit_event("job.delete", job_id, detail=f"owner {found['owner']}")
    return jsonify(id=job_id, deleted=True)


@api.post("/jobs/<job_id>/priority")
@require(Role.MEMBER)
def set_priority(job_id: str):
    body = json_body(optional=True)
    try:
        priority = priority_of(body.get("priority"))
    except SubmitError as exc:
        raise BadRequest(422, exc.field, exc.reason) from None
    return _steer(job_id, "priority", lambda j: farm.jobs().set_priority(j, priority))


def _batch_specs(body: dict[str, Any]) -> list[AnySpec]:
    raw = body.get("jobs") if "jobs" in body else [body.get("spec")]
    if not (isinstance(raw, list) and raw and all(isinstance(s, dict) for s in raw)):
        reason = 'must be a JSON object with "jobs": [spec, ...] or "spec": {...}'
        raise BadRequest(400, "body", reason)
    if len(raw) > MAX_BATCH_SPECS:
        raise BadRequest(422, "jobs", f"at most {MAX_BATCH_SPECS} specs per batch")
    specs, errors = [], []
    for i, item in enumerate(raw):
        try:
            specs.append(parse_spec(item, farm.settings()))
        except ValidationError as exc:
            prefix = f"jobs.{i}." if "jobs" in body else "spec."
            errors += [{**e, "field": prefix + e["field"]} for e in field_errors(exc)]
    if errors:
        first, *rest = errors
        raise BadRequest(422, first["field"], first["reason"], rest)
    return specs


@api.post("/batches")
@require(Role.MEMBER)
def submit_batch():
    """{"jobs": [spec, ...]} or {"spec": spec} (its batch_count split into jobs)."""
    body = json_body()
    owner, submitted_by, priority = _submission(body)
    specs = _batch_specs(body)
    batch, created = Batches(farm.jobs()).submit(
        specs,
        owner.name,
        priority,
        farm.accounts().limits(owner),
        submitted_by,
        audit=audit_entry("batch.submit"),
        idempotency_key=idempotency_key(),
    )
    location = url_for("api.get_batch", batch_id=batch["id"])
    return jsonify(batch_view(batch)), 202 if created else 200, {"Location": location}


def batch_view(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "jobs": [job_view(j) for j in batch["jobs"]]}


@api.get("/batches/<batch_id>")
@require(Role.VIEWER)
def get_batch(batch_id: str):
    batch = Batches(farm.jobs()).get(batch_id)
    if batch is None:
        return jsonify(error=f"no batch {batch_id!r}"), 404
    return jsonify(batch_view(batch))


@api.post("/batches/<batch_id>/cancel")
@require(Role.MEMBER)
def cancel_batch(batch_id: str):
    batches = Batches(farm.jobs())
    batch = batches.get(batch_id)
    if batch is None:
        return jsonify(error=f"no batch {batch_id!r}"), 404
    me = _me()
    if batch["owner"] != me.name and not me.role.allows(Role.OPERATOR):
        return jsonify(error=f"batch {batch_id} is {batch['owner']}'s"), 403
    audit_event("batch.cancel", batch_id)
    return jsonify(batch_view(batches.cancel(batch_id)))


def int_arg(name: str, default: int) -> int:
    """The query argument `name` as an integer (absent or empty: `default`); anything else is
    a 422 naming it, not the default as if it were absent."""
    value = request.args.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(422, name, "must be a whole number") from None


def _paging() -> tuple[int, int]:
    page = int_arg("page", 1)
    per_page = int_arg("per_page", 50)
    if not 1 <= page <= MAX_PAGE:
        raise BadRequest(422, "page", f"must be between 1 and {MAX_PAGE:,}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise BadRequest(422, "per_page", f"must be between 1 and {MAX_PER_PAGE}")
    return page, per_page


def _owner_arg() -> str | None:
    owner = request.args.get("owner") or None
    return _me().name if owner == "me" else owner


def _statuses() -> tuple[StatusView, ...]:
    asked = [s for arg in request.args.getlist("status") for s in arg.split(",") if s]
    try:
        return tuple(StatusView(s) for s in asked)
    except ValueError:
        raise BadRequest(422, "status", f"each must be one of {', '.join(StatusView)}") from None


def _hardware_arg() -> str | None:
    hardware = request.args.get("hardware") or None
    classes = (AUTO, *Hardware)
    if hardware is not None and hardware not in classes:
        raise BadRequest(422, "hardware", f"must be one of {', '.join(classes)}")
    return hardware


@api.get("/jobs")
@require(Role.VIEWER)
def list_jobs():
    """Filtered, paged, newest first; `limit` alone (older clients) is the first page of
    that size, up to 500."""
    if "limit" in request.args and "per_page" not in request.args:
        page, per_page = 1, min(max(int_arg("limit", 50), 1), 500)
    else:
        page, per_page = _paging()
    query = JobQuery(
        owner=_owner_arg(),
        statuses=_statuses(),
        model=request.args.get("model") or None,
        hardware=_hardware_arg(),
        q=request.args.get("q") or None,
    )
    found = find_jobs(farm.jobs().redis, query, page, per_page)
    records = farm.jobs().records.get_many(found.ids)
    return jsonify(
        jobs=[job_view(r) for r in records],
        total=found.total,
        page=page,
        per_page=per_page,
        truncated=found.truncated,
        searched=found.searched,
    )


@api.get("/gallery")
@require(Role.VIEWER)
def list_gallery():
    page, per_page = _paging()
    items, total = gallery(farm.jobs().redis, farm.jobs().records, _owner_arg(), page, per_page)
    out = []
    for item in items:
        record, index = item["record"], item["index"]
        spec = record["spec"]
        view = output_view(record["id"], index, record["outputs"][index])
        out.append(
            {
                "job": record["id"],
                "index": index,
                "owner": record["owner"],
                "prompt": spec.get("prompt", ""),
                "model": record.get("model") or spec.get("model") or spec.get("upscaler"),
                "width": spec.get("width"),
                "height": spec.get("height"),
                "created_at": record["created_at"],
                "finished_at": record.get("finished_at"),
                "url": view["url"],
                "thumbnail_url": view["thumbnail_url"],
            }
        )
    return jsonify(items=out, total=total, page=page, per_page=per_page)


def input_views(record: dict[str, Any]) -> list[dict[str, str]]:
    """The job's stored input images (init image, mask, ControlNet images), each by its
    field. Only in the one job's answer: lists would parse every job's spec for them."""
    job_id, images = record["id"], load_spec(record["spec"]).images()
    return [
        {"field": name, "key": key, "url": url_for("api.job_input", job_id=job_id, field=name)}
        for name, key in images.items()
    ]


@api.get("/jobs/<job_id>")
@require(Role.VIEWER)
def get_job(job_id: str):
    record = farm.jobs().records.get(job_id)
    if record is None:
        return jsonify(error=f"no job {job_id!r}"), 404
    return jsonify(job_view(record) | {"inputs": input_views(record)})


@api.get("/jobs/<job_id>/inputs/<field>")
@require(Role.VIEWER)
def job_input(job_id: str, field: str):
    """One stored input image of the job (a PNG), by its field: `init_image`, `mask`,
    `image` (an upscale's), `controlnet.<n>.image`."""
    record = farm.jobs().records.get(job_id)
    if record is None:
        return jsonify(error=f"no job {job_id!r}"), 404
    images = load_spec(record["spec"]).images()
    if field not in images:
        has = ", ".join(images) or "none"
        return jsonify(error=f"job {job_id!r} has no input {field!r} (its inputs: {has})"), 404
    try:
        data = farm.jobs().storage.get(images[field])
    except ObjectNotFound:
        return jsonify(error=f"input {field} of job {job_id!r} is missing from storage"), 404
    return _immutable(data, "image/png")  # stored under the hash of its bytes


def _output_key(job_id: str, index: int) -> str | tuple[Response, int]:
    """The storage key of a job's output `index`, or the 404 to answer."""
    record = farm.jobs().records.get(job_id)
    if record is None:
        return jsonify(error=f"no job {job_id!r}"), 404
    keys = record.get("outputs", [])
    if not 0 <= index < len(keys):
        return jsonify(error=f"job {job_id!r} has no output {index}"), 404
    return keys[index]


@api.get("/jobs/<job_id>/outputs/<int:index>")
@require(Role.VIEWER)
def job_output(job_id: str, index: int):
    key = _output_key(job_id, index)
    if not isinstance(key, str):
        return key
    try:
        data = farm.jobs().storage.get(key)
    except ObjectNotFound:
        return jsonify(error=f"output {index} of job {job_id!r} is missing from storage"), 404
    # An output never changes once its job has succeeded, so browsers may keep it.
    resp = Response(data, mimetype="image/png")
    resp.cache_control.private = True
    resp.cache_control.max_age = 3600
    return resp


@api.get("/jobs/<job_id>/outputs/<int:index>/thumbnail")
@require(Role.VIEWER)
def job_thumbnail(job_id: str, index: int):
    """A WebP of output `index`, its longest side `size` (128 or 256) pixels."""
    size = int_arg("size", thumbnails.DEFAULT_SIZE)
    if size not in thumbnails.SIZES:
        raise BadRequest(422, "size", f"must be one of {', '.join(map(str, thumbnails.SIZES))}")
    key = _output_key(job_id, index)
    if not isinstance(key, str):
        return key
    try:
        jobs = farm.jobs()
        data = thumbnails.thumbnail(jobs.storage, jobs.records, key, job_id, index, size)
    except ObjectNotFound:
        return jsonify(error=f"output {index} of job {job_id!r} is missing from storage"), 404
    # The output of a succeeded job never changes, nor its thumbnail.
    return _immutable(data, thumbnails.MIMETYPE)


def _immutable(data: bytes, mimetype: str) -> Response:
    """An image whose address always gives the same bytes: browsers keep it for long."""
    resp = Response(data, mimetype=mimetype)
    resp.cache_control.private = True
    resp.cache_control.max_age = 30 * 86400
    resp.cache_control.immutable = True
    return resp


@api.get("/workers")
@require(Role.VIEWER)
def workers():
    return jsonify(workers=live_workers(farm.jobs().redis))


@api.post("/workers/<name>/drain")
@require(Role.OPERATOR)
def drain_worker(name: str):
    """Drain (or, with {"drain": false}, undrain) a worker: it finishes its job, takes no new."""
    draining = bool(json_body(optional=True).get("drain", True))
    redis = farm.jobs().redis
    # A name no heartbeat has (a typo, a worker gone) would drain nothing and keep its flag for
    # ever; undraining any name is allowed, so a flag left by a worker gone can be cleared.
    if draining and not is_live(redis, name):
        return jsonify(error=f"no live worker {name!r} (see GET /api/v1/workers)"), 404
    drain(redis, name, draining)
    audit_event("worker.drain" if draining else "worker.undrain", name)
    return jsonify(worker=name, draining=draining)


@api.get("/models")
@require(Role.VIEWER)
def models():
    return jsonify(models=[m.as_dict() for m in farm.models().list()])
