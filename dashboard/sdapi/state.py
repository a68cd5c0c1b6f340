"""Per-caller state: SD-WebUI keeps one global state; many people share this farm.

Options are each account's own (a Redis hash); progress is the running job of the caller's
SD-WebUI calls, read from its record; interrupt and skip cancel the jobs those calls wait
for, never another job of the caller's, nor anyone else's.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from dashboard.sdapi import catalogue
from dashboard.sdapi.errors import invalid
from dashboard.sdapi.mapping import clip_skip
from scheduler.control import ConflictError, JobControl
from shared import keys
from shared.config import Settings
from shared.vocabulary import ACTIVE, JobStatus

SAMPLES_FORMATS = ("png",)


def default_options(settings: Settings) -> dict[str, Any]:
    model = catalogue.default_checkpoint(settings)
    return {
        "sd_model_checkpoint": catalogue.title(model) if model else None,
        "sd_checkpoint_hash": catalogue.model_hash(model) if model else None,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "samples_format": "png",
        "save_images_before_face_restoration": False,
        "send_seed": True,
        "face_restoration_model": None,
    }


class CallerOptions:
    def __init__(self, jobs: JobControl, settings: Settings, account: str) -> None:
        self.redis = jobs.redis
        self.settings = settings
        self.key = keys.sdapi_options(account)

    def get(self) -> dict[str, Any]:
        own = {k.decode(): json.loads(v) for k, v in self.redis.hgetall(self.key).items()}
        options = {**default_options(self.settings), **own}
        # The title always names a model that is still there, with its current hash.
        model = catalogue.find_checkpoint(str(options["sd_model_checkpoint"] or ""), self.settings)
        if model is None:
            model = catalogue.default_checkpoint(self.settings)
        options["sd_model_checkpoint"] = catalogue.title(model) if model else None
        options["sd_checkpoint_hash"] = catalogue.model_hash(model) if model else None
        return options

    def update(self, body: dict[str, Any]) -> list[str]:
        """Set the options we know from `body` (the whole echoed dict is fine); the names
        of those that changed. An unknown model or VAE is a 422 naming it."""
        current, changes = self.get(), {}
        for name, value in body.items():
            if name not in current or value is None or value == current[name]:
                continue  # unknown keys and echoed values change nothing
            changes[name] = check_option(name, value, self.settings)
        if changes:
            self.redis.hset(self.key, mapping={k: json.dumps(v) for k, v in changes.items()})
        return sorted(changes)


def check_option(name: str, value: Any, settings: Settings) -> Any:
    """The value to store for option `name`, or a 422 naming it."""
    if name == "sd_model_checkpoint":
        model = catalogue.find_checkpoint(str(value), settings)
        if model is None:
            raise invalid(name, f"unknown checkpoint {value!r}; see GET /sdapi/v1/sd-models")
        return catalogue.title(model)
    if name == "sd_vae":
        known, vae = catalogue.find_vae(str(value), settings)
        if not known:
            raise invalid(name, f"unknown VAE {value!r}; see GET /sdapi/v1/sd-vae")
        return vae or "Automatic"
    if name == "CLIP_stop_at_last_layers":
        return clip_skip(value, name)  # what a generation could honour, or a 422
    if name == "samples_format":
        if str(value).lower() not in SAMPLES_FORMATS:
            raise invalid(name, "the farm writes PNG images only")
        return "png"
    if name == "sd_checkpoint_hash":
        return value  # derived from sd_model_checkpoint on every read
    raise invalid(name, "this option cannot be changed on the farm")


def track_calls(jobs: JobControl, owner: str, job_ids: list[str], ttl_s: float) -> None:
    """The caller's SD-WebUI call now waits for `job_ids` (forgotten after `ttl_s`, should the
    call's process die)."""
    key = keys.sdapi_calls(owner)
    with jobs.redis.pipeline() as pipe:
        pipe.sadd(key, *job_ids)
        pipe.expire(key, int(ttl_s) + 60)
        pipe.execute()


def untrack_calls(jobs: JobControl, owner: str, job_ids: list[str]) -> None:
    if job_ids:  # an extras call that only resizes queues none
        jobs.redis.srem(keys.sdapi_calls(owner), *job_ids)


def caller_jobs(jobs: JobControl, owner: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(the caller's jobs its SD-WebUI calls wait for that wait for dispatch, those
    dispatched or running). Only those: its jobs from the REST API and the dashboard (an
    overnight batch) are none of SD-WebUI's progress or interrupt."""
    ids = sorted(i.decode() for i in jobs.redis.smembers(keys.sdapi_calls(owner)))
    records = [r for r in jobs.records.get_many(ids) if not r["status"].final]
    active = [r for r in records if r["status"] in ACTIVE]
    pending = [r["id"] for r in records if r["status"] not in ACTIVE]
    return pending, active


def progress(jobs: JobControl, owner: str) -> dict[str, Any]:
    """SD-WebUI's progress answer for the caller; idle is progress 0 and job_count 0."""
    pending, active = caller_jobs(jobs, owner)
    running = [r for r in active if r["status"] == JobStatus.RUNNING]
    current = running[0] if running else (active[0] if active else None)
    done, steps, eta, job, stamp = 0.0, 0, 0.0, "", ""
    if current is not None:
        done = float(current["progress"])
        steps = int(current["spec"].get("steps", 0))
        started = current.get("started_at")
        if started and done > 0:
            elapsed = time.time() - float(started)
            eta = elapsed / done * (1 - done)
        job = f"job {current['id']}"
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(float(current["created_at"])))
    return {
        "progress": done,
        "eta_relative": eta,
        "state": {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": job,
            "job_count": len(pending) + len(active),
            "job_timestamp": stamp or "0",
            "job_no": 0,
            "sampling_step": int(done * steps),
            "sampling_steps": steps,
        },
        "current_image": None,
        "textinfo": current["status"].view if current else None,
    }


def cancel_unfinished(jobs: JobControl, owner: str) -> list[str]:
    """Cancel the jobs the caller's SD-WebUI calls wait for: those calls then return.
    (SD-WebUI runs one job at a time, so its interrupt stops everything the caller is
    waiting for; the caller's other jobs go on.)"""
    pending, active = caller_jobs(jobs, owner)
    canceled = []
    for job_id in [r["id"] for r in active] + pending:
        with contextlib.suppress(ConflictError, KeyError):  # finished meanwhile
            jobs.cancel(job_id)
            canceled.append(job_id)
    return canceled
