"""The `/sdapi/v1` routes. Generation calls are ordinary farm jobs owned by the caller, and
answer when the job is final — woken by its event (scheduler/events.py), not by polling."""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any

import psutil
from flask import Blueprint, jsonify, request
from PIL import Image
from pydantic import ValidationError

from dashboard import farm
from dashboard.accounts import Account, Role
from dashboard.api import json_body
from dashboard.auth import audit_entry, audit_event, current_account, require
from dashboard.holds import client_gone
from dashboard.sdapi import catalogue, mapping, replies
from dashboard.sdapi.errors import Failure, add_handlers, invalid, rename_field, validation_errors
from dashboard.sdapi.state import (
    CallerOptions,
    cancel_unfinished,
    progress,
    track_calls,
    untrack_calls,
)
from scheduler.control import ConflictError, SubmitError
from scheduler.events import JobEvents
from shared.jobspec import decode_image, output_size_error, parse_spec
from shared.storage import ObjectNotFound
from shared.vocabulary import JobStatus, Priority

sdapi = Blueprint("sdapi", __name__)
add_handlers(sdapi)


def _me() -> Account:
    account = current_account()
    assert account is not None, "the view is guarded by require()"
    return account


def _options() -> dict[str, Any]:
    return CallerOptions(farm.jobs(), farm.settings(), _me().name).get()


# -- running jobs ----------------------------------------------------------------------


def _submit(spec: dict[str, Any], rename: dict[str, str]) -> dict[str, Any]:
    """Validate and queue one job as the caller (its quota applies), audited."""
    me = _me()
    try:
        parsed = parse_spec(spec, farm.settings())
    except ValidationError as exc:
        raise validation_errors(exc, rename) from None
    try:
        record, _ = farm.jobs().submit(
            parsed,
            me.name,
            Priority.NORMAL,
            quota=farm.accounts().limits(me),
            audit=audit_entry("job.submit", detail="sdapi"),
        )
    except SubmitError as exc:
        raise invalid(rename_field(exc.field, rename), exc.reason) from None
    track_calls(farm.jobs(), me.name, [record["id"]], farm.settings().sdapi_wait_s)
    return record


def _submit_all(jobs: list[tuple[dict[str, Any], dict[str, str]]]) -> list[dict[str, Any]]:
    """Queue every job or none: a refusal part-way (a bad image, the quota) cancels the
    ones already queued, so nothing runs for a call that failed."""
    records: list[dict[str, Any]] = []
    try:
        for spec, rename in jobs:
            records.append(_submit(spec, rename))
    except Exception:
        for record in records:
            with contextlib.suppress(ConflictError, KeyError):  # already final
                farm.jobs().cancel(record["id"])
        untrack_calls(farm.jobs(), _me().name, [r["id"] for r in records])
        raise
    return records


def _finish(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Block until every job is final; all succeeded, or an error and none of the results."""
    try:
        return _wait_all(records)
    finally:
        untrack_calls(farm.jobs(), _me().name, [r["id"] for r in records])


def _wait_all(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    jobs, events = farm.jobs(), JobEvents(farm.jobs().redis)
    deadline = time.monotonic() + farm.settings().sdapi_wait_s
    gone = client_gone()
    done = []
    for record in records:
        left = deadline - time.monotonic()
        final = events.wait_final(jobs.records, record["id"], left, stop=gone)
        if final is None or final["status"] != JobStatus.SUCCEEDED:
            for other in records:  # no half results: nothing else is left running
                with contextlib.suppress(ConflictError, KeyError):  # already final
                    jobs.cancel(other["id"])
        if final is None:  # only a finished job can be deleted: it was, before it was read
            raise Failure(
                409, "JobDeleted", f"job {record['id']} was deleted before this call read it"
            )
        if not final["status"].final and gone():  # no one to answer: its jobs canceled
            raise Failure(499, "ClientClosedRequest", "the client closed the connection")
        if not final["status"].final:
            wait = f"{farm.settings().sdapi_wait_s:g} s (RENDERFARM_SDAPI_WAIT_S)"
            raise Failure(504, "Timeout", f"job {record['id']} not done after {wait}; canceled")
        if final["status"] == JobStatus.CANCELED:
            why = final.get("error") or "interrupted"
            raise Failure(409, "JobCanceled", f"job {record['id']} was canceled: {why}")
        if final["status"] == JobStatus.FAILED:
            raise Failure(500, "JobFailed", f"job {record['id']} failed: {final.get('error')}")
        done.append(final)
    return done


def _pngs(record: dict[str, Any]) -> list[bytes]:
    try:
        return [farm.jobs().storage.get(key) for key in record.get("outputs", [])]
    except ObjectNotFound:  # the job deleted (DELETE /api/v1/jobs/<id>) as it finished
        raise Failure(
            409, "JobDeleted", f"job {record['id']} was deleted with its images"
        ) from None


def _generation(spec: dict[str, Any], body: dict[str, Any]):
    with farm.holds().holding(_me().name):  # refused before its job is queued
        record = _finish([_submit(spec, mapping.renames(body))])[0]
    pngs = _pngs(record)
    infotexts = [replies.png_text(png).get("parameters", "") for png in pngs]
    send = mapping.Fields(body).bool("send_images", True)
    included = mapping.Fields(body).bool("include_init_images", False)
    return jsonify(
        images=[replies.b64(png) for png in pngs] if send else [],
        parameters=replies.parameters(body, included),
        info=replies.info(record, infotexts, farm.settings()),
    )


@sdapi.post("/txt2img")
@require(Role.MEMBER)
def txt2img():
    body = json_body()
    return _generation(mapping.txt2img(body, _options(), farm.settings()), body)


@sdapi.post("/img2img")
@require(Role.MEMBER)
def img2img():
    body = json_body()
    return _generation(mapping.img2img(body, _options(), farm.settings()), body)


def _extras(body: dict[str, Any], image: Any, field: str) -> bytes:
    """One extras image, upscaled by a farm job (an upscaler model) or resized here."""
    settings = farm.settings()
    image = mapping.image_value(image, field)
    extras = mapping.extras(body, image, settings)
    if extras.spec is not None:
        return extras.spec  # type: ignore[return-value]  # queued by the caller
    try:
        raw = decode_image(image, settings.max_input_pixels)
    except ValueError as exc:
        raise invalid(field, str(exc)) from None
    resizer = extras.resizer or "None"
    with Image.open(io.BytesIO(raw)) as im:
        size = im.size
    if resizer != "None":
        size = extras.size or (
            max(1, round(size[0] * extras.scale)),
            max(1, round(size[1] * extras.scale)),
        )
    if reason := output_size_error(*size, settings):
        raise invalid("upscaling_resize", f"the result would be {reason}")
    return replies.resize(raw, resizer, extras.scale, extras.size)


def _run_extras(body: dict[str, Any], images: list[tuple[Any, str]]) -> list[bytes]:
    """Resized images directly; upscaler jobs all queued first, then waited for."""
    results: list[Any] = [_extras(body, image, field) for image, field in images]
    jobs = {i: r for i, r in enumerate(results) if isinstance(r, dict)}
    if not jobs:
        return results
    with farm.holds().holding(_me().name):  # refused before its jobs are queued
        queued = _submit_all(
            [(spec, {**mapping.EXTRAS_RENAME, "image": images[i][1]}) for i, spec in jobs.items()]
        )
        finals = _finish(queued)
    for i, final in zip(jobs, finals, strict=True):
        results[i] = _pngs(final)[0]
    return results


def _html_info(body: dict[str, Any]) -> str:
    f = mapping.Fields(body)
    return f"<p>Postprocess upscaler: {f.str('upscaler_1', 'None')}</p>"


@sdapi.post("/extra-single-image")
@require(Role.MEMBER)
def extra_single_image():
    body = json_body()
    if not body.get("image"):
        raise invalid("image", "field required", "value_error.missing")
    (png,) = _run_extras(body, [(body["image"], "image")])
    return jsonify(html_info=_html_info(body), image=replies.b64(png))


@sdapi.post("/extra-batch-images")
@require(Role.MEMBER)
def extra_batch_images():
    body = json_body()
    items = mapping.Fields(body).list("imageList")
    if not items:
        raise invalid("imageList", "field required: a list of {data, name}", "value_error.missing")
    limit = farm.settings().sdapi_max_images
    if len(items) > limit:
        raise invalid("imageList", f"at most {limit} images per call (RENDERFARM_SDAPI_MAX_IMAGES)")
    images = []
    for i, item in enumerate(items):
        data = item.get("data") if isinstance(item, dict) else None
        images.append((data, f"imageList.{i}.data"))
    pngs = _run_extras(body, images)
    return jsonify(html_info=_html_info(body), images=[replies.b64(p) for p in pngs])


@sdapi.post("/png-info")
@require(Role.VIEWER)
def png_info():
    body = json_body()
    image = body.get("image")
    if not image:
        return jsonify(info="", items={}, parameters={})
    try:
        raw = decode_image(mapping.image_value(image, "image"), farm.settings().max_input_pixels)
    except ValueError as exc:
        raise invalid("image", str(exc)) from None
    texts = replies.png_text(raw)
    text = texts.pop("parameters", "")
    return jsonify(info=text, items=texts, parameters=replies.parse_infotext(text) if text else {})


@sdapi.post("/interrogate")
@require(Role.VIEWER)
def interrogate():
    # SD-WebUI captions an image with CLIP or DeepBooru; the farm has neither model.
    raise Failure(
        501,
        "NotImplemented",
        "interrogate is not available on the farm: it has no captioning models (clip, deepbooru)",
    )


# -- per-caller state ------------------------------------------------------------------


@sdapi.get("/options")
@require(Role.VIEWER)
def get_options():
    return jsonify(_options())


@sdapi.post("/options")
@require(Role.VIEWER)
def set_options():
    body = json_body()
    changed = CallerOptions(farm.jobs(), farm.settings(), _me().name).update(body)
    if changed:
        audit_event("sdapi.options", _me().name, ", ".join(changed))
    return jsonify(updated=changed)


@sdapi.get("/progress")
@require(Role.VIEWER)
def get_progress():
    return jsonify(progress(farm.jobs(), _me().name))


def _interrupt():
    for job_id in cancel_unfinished(farm.jobs(), _me().name):
        audit_event("job.cancel", job_id, "sdapi interrupt")
    return jsonify({})


@sdapi.post("/interrupt")
@require(Role.MEMBER)
def interrupt():
    return _interrupt()


@sdapi.post("/skip")
@require(Role.MEMBER)
def skip():
    return _interrupt()


# -- lists -----------------------------------------------------------------------------


@sdapi.get("/sd-models")
@require(Role.VIEWER)
def sd_models():
    return jsonify(catalogue.sd_models(farm.settings()))


@sdapi.post("/refresh-checkpoints")
@require(Role.VIEWER)
def refresh_checkpoints():
    return jsonify({})  # the store is read on every call; nothing to refresh


@sdapi.post("/refresh-vae")
@require(Role.VIEWER)
def refresh_vae():
    return jsonify({})


@sdapi.get("/sd-vae")
@require(Role.VIEWER)
def sd_vae():
    return jsonify(catalogue.sd_vae(farm.settings()))


@sdapi.get("/samplers")
@require(Role.VIEWER)
def samplers():
    return jsonify(catalogue.samplers())


@sdapi.get("/schedulers")
@require(Role.VIEWER)
def schedulers():
    return jsonify(catalogue.schedulers())


@sdapi.get("/upscalers")
@require(Role.VIEWER)
def upscalers():
    return jsonify(catalogue.upscalers(farm.settings()))


@sdapi.get("/latent-upscale-modes")
@require(Role.VIEWER)
def latent_upscale_modes():
    return jsonify([{"name": name} for name in catalogue.LATENT_MODES])


@sdapi.get("/scripts")
@require(Role.VIEWER)
def scripts():
    return jsonify(txt2img=[], img2img=[])


@sdapi.get("/embeddings")
@require(Role.VIEWER)
def embeddings():
    return jsonify(loaded={}, skipped={})


def _empty_list():
    return jsonify([])


for _name in ("loras", "face-restorers", "prompt-styles", "hypernetworks", "realesrgan-models"):
    sdapi.add_url_rule(
        f"/{_name}", f"empty_{_name.replace('-', '_')}", require(Role.VIEWER)(_empty_list)
    )


@sdapi.get("/memory")
@require(Role.VIEWER)
def memory():
    vm = psutil.virtual_memory()
    return jsonify(
        ram={"free": vm.available, "used": vm.total - vm.available, "total": vm.total},
        cuda={"error": "jobs run on the farm's workers; see GET /api/v1/workers"},
    )


@sdapi.get("/cmd-flags")
@require(Role.VIEWER)
def cmd_flags():
    # Never a secret (SD-WebUI echoes --api-auth here).
    store = farm.models().location
    return jsonify(
        api=True,
        api_auth=None,
        nowebui=False,
        ckpt_dir=f"{store}/checkpoints",
        vae_dir=f"{store}/vae",
        esrgan_models_path=f"{store}/upscalers",
        listen=request.host,
    )


@sdapi.get("/version")
@require(Role.VIEWER)
def version():
    return jsonify(app="renderfarm", version=replies.VERSION, api="sdapi/v1")
