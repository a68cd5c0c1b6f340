"""REST API v1: submit jobs, read their records and outputs, list models."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for
from pydantic import ValidationError

from dashboard import farm
from scheduler.batches import Batches
from scheduler.control import ConflictError, SubmitError, priority_of
from scheduler.fleet import drain, live_workers
from shared.jobspec import field_errors, parse_spec
from shared.modelstore import list_models
from shared.storage import ObjectNotFound
from shared.vocabulary import Priority

api = Blueprint("api", __name__)


def _invalid(status: int, errors: list[dict[str, str]]) -> tuple[Response, int]:
    return jsonify(error="invalid job spec", errors=errors), status


def job_view(record: dict[str, Any]) -> dict[str, Any]:
    """A job record as clients see it."""
    outputs = [
        {"index": i, "key": key, "url": url_for("api.job_output", job_id=record["id"], index=i)}
        for i, key in enumerate(record.get("outputs", []))
    ]
    return {
        "id": record["id"],
        "status": record["status"].view,
        "state": record["status"],
        "waiting": record.get("waiting") or None,
        "note": record.get("note") or None,
        "owner": record["owner"],
        "priority": record["priority"],
        "attempts": record["attempts"],
        "progress": record["progress"],
        "spec": record["spec"],
        "seeds": record["seeds"],
        "queue": record["queue"],
        "worker": record.get("worker"),
        "error": record.get("error"),
        "outputs": outputs,
        "manifest": record.get("manifest"),
        "created_at": record["created_at"],
        "dispatched_at": record.get("dispatched_at"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
    }


@api.post("/jobs")
def submit_job():
    body = request.get_json(silent=True)
    if body is None:
        return _invalid(400, [{"field": "body", "reason": "not a JSON document"}])
    if not isinstance(body, dict):
        return _invalid(400, [{"field": "body", "reason": "must be a JSON object"}])
    # Who submits and how urgent: beside the spec, not part of it.
    owner = str(body.pop("owner", "anonymous"))[:100] or "anonymous"
    try:
        priority = priority_of(body.pop("priority", Priority.NORMAL))
        spec = parse_spec(body, farm.settings())
        record, created = farm.jobs().submit(
            spec, owner, priority, request.headers.get("Idempotency-Key")
        )
    except ValidationError as exc:
        return _invalid(422, field_errors(exc))
    except SubmitError as exc:
        return _invalid(422, [{"field": exc.field, "reason": exc.reason}])
    except ConflictError as exc:
        return jsonify(error=str(exc)), 409
    location = url_for("api.get_job", job_id=record["id"])
    return jsonify(job_view(record)), 202 if created else 200, {"Location": location}


def _control(action, job_id: str, *args):
    try:
        return jsonify(job_view(action(job_id, *args)))
    except KeyError:
        return jsonify(error=f"no job {job_id!r}"), 404
    except ConflictError as exc:
        return jsonify(error=str(exc)), 409
    except SubmitError as exc:
        return _invalid(422, [{"field": exc.field, "reason": exc.reason}])


@api.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    return _control(farm.jobs().cancel, job_id)


@api.post("/jobs/<job_id>/retry")
def retry_job(job_id: str):
    return _control(farm.jobs().retry, job_id)


@api.post("/jobs/<job_id>/priority")
def set_priority(job_id: str):
    body = request.get_json(silent=True) or {}
    jobs = farm.jobs()
    return _control(lambda j: jobs.set_priority(j, priority_of(body.get("priority"))), job_id)


@api.post("/batches")
def submit_batch():
    """{"jobs": [spec, ...]} or {"spec": spec} (its batch_count split into jobs)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not (
        isinstance(body.get("jobs"), list) and body["jobs"] or isinstance(body.get("spec"), dict)
    ):
        reason = 'must be a JSON object with "jobs": [spec, ...] or "spec": {...}'
        return _invalid(400, [{"field": "body", "reason": reason}])
    owner = str(body.get("owner", "anonymous"))[:100] or "anonymous"
    try:
        priority = priority_of(body.get("priority", Priority.NORMAL))
    except SubmitError as exc:
        return _invalid(422, [{"field": exc.field, "reason": exc.reason}])
    raw = body["jobs"] if "jobs" in body else [body["spec"]]
    if len(raw) > 1000:
        return _invalid(422, [{"field": "jobs", "reason": "at most 1000 specs per batch"}])
    specs, errors = [], []
    for i, item in enumerate(raw):
        try:
            specs.append(parse_spec(item, farm.settings()))
        except ValidationError as exc:
            prefix = f"jobs.{i}." if "jobs" in body else "spec."
            errors += [{**e, "field": prefix + e["field"]} for e in field_errors(exc)]
    if errors:
        return _invalid(422, errors)
    try:
        batch = Batches(farm.jobs()).submit(specs, owner, priority)
    except SubmitError as exc:
        return _invalid(422, [{"field": exc.field, "reason": exc.reason}])
    return jsonify(batch_view(batch)), 202


def batch_view(batch: dict[str, Any]) -> dict[str, Any]:
    return {**batch, "jobs": [job_view(j) for j in batch["jobs"]]}


@api.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    batch = Batches(farm.jobs()).get(batch_id)
    if batch is None:
        return jsonify(error=f"no batch {batch_id!r}"), 404
    return jsonify(batch_view(batch))


@api.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    batch = Batches(farm.jobs()).cancel(batch_id)
    if batch is None:
        return jsonify(error=f"no batch {batch_id!r}"), 404
    return jsonify(batch_view(batch))


@api.get("/jobs")
def list_jobs():
    limit = min(request.args.get("limit", 50, type=int), 500)
    return jsonify(jobs=[job_view(r) for r in farm.jobs().records.recent(limit)])


@api.get("/jobs/<job_id>")
def get_job(job_id: str):
    record = farm.jobs().records.get(job_id)
    if record is None:
        return jsonify(error=f"no job {job_id!r}"), 404
    return jsonify(job_view(record))


@api.get("/jobs/<job_id>/outputs/<int:index>")
def job_output(job_id: str, index: int):
    record = farm.jobs().records.get(job_id)
    if record is None:
        return jsonify(error=f"no job {job_id!r}"), 404
    keys = record.get("outputs", [])
    if not 0 <= index < len(keys):
        return jsonify(error=f"job {job_id!r} has no output {index}"), 404
    try:
        data = farm.jobs().storage.get(keys[index])
    except ObjectNotFound:
        return jsonify(error=f"output {index} of job {job_id!r} is missing from storage"), 404
    # An output never changes once its job has succeeded, so browsers may keep it.
    resp = Response(data, mimetype="image/png")
    resp.cache_control.private = True
    resp.cache_control.max_age = 3600
    return resp


@api.get("/workers")
def workers():
    return jsonify(workers=live_workers(farm.jobs().redis))


@api.post("/workers/<name>/drain")
def drain_worker(name: str):
    """Drain (or, with {"drain": false}, undrain) a worker: it finishes its job, takes no new."""
    body = request.get_json(silent=True) or {}
    draining = bool(body.get("drain", True))
    drain(farm.jobs().redis, name, draining)
    return jsonify(worker=name, draining=draining)


@api.get("/models")
def models():
    return jsonify(models=[m.as_dict() for m in list_models(farm.settings().models_dir)])
