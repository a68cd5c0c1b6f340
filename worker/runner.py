"""One job's lifecycle: record → cached models → pipeline → checked output → storage → record.

The rest of the worker lives beside it: the device and cache (device.py), how models load
(backend.py), the attempt and its watchdog state (attempt.py), fault hooks (faults.py).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack, nullcontext, suppress
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from celery import Celery
from celery.worker import state as celery_state
from PIL import Image
from redis.exceptions import RedisError

from scheduler.celery_app import RUN_JOB
from scheduler.leases import Leases
from scheduler.leases import token as lease_token
from scheduler.records import JobRecords
from shared import keys
from shared.config import Settings, redis_client
from shared.jobspec import AnySpec, Img2ImgSpec, UpscaleSpec, load_spec, target_size
from shared.modelstore import FAMILIES, ModelInfo, open_model_store
from shared.storage import ObjectNotFound, open_storage
from shared.vocabulary import Hardware, JobKind, JobStatus
from worker import faults, images, outputs, pipelines
from worker.attempt import Attempt, JobCanceled, JobFailed, LeaseLost
from worker.backend import make_backend
from worker.cache import CacheKey
from worker.device import make_cache, pick_device
from worker.memory import release_memory
from worker.modelfetch import ModelFetcher
from worker.tiers import TieredCache
from worker.upscalers import upscale

log = logging.getLogger(__name__)

Loader = Callable[[ModelInfo, str, torch.dtype], Any]


class JobRunner:
    def __init__(
        self, settings: Settings, hardware: Hardware, name: str, device: str | None = None
    ) -> None:
        self.settings = settings
        self.hardware = hardware
        self.name = name
        self.device, self.dtype = pick_device(hardware, device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.redis = redis_client(settings)
        self.records = JobRecords(self.redis)
        self.leases = Leases(self.redis, settings.lease_s)
        self.storage = open_storage(settings)
        self.store = open_model_store(settings)
        # An object-store model store: models are fetched into this host's disk cache.
        self.fetcher = ModelFetcher.from_settings(settings) if settings.models_url else None
        self.cache = make_cache(settings, self.device)
        # A tiered cache loads models into RAM and moves them to the GPU itself.
        self.load_device = "cpu" if isinstance(self.cache, TieredCache) else self.device
        self.current: Attempt | None = None
        # torch as it is, or OpenVINO (converted IR, compiled shapes in the same cache).
        self.backend = make_backend(hardware, settings, self.device, self.cache)
        self.kinds = tuple(JobKind)
        self.jobs_done = 0
        self.jobs_failed = 0

    # -- models, through the one cache every family shares ---------------------------------

    def _key(self, family: str, name: str) -> tuple[ModelInfo, CacheKey]:
        model = self.store.find(name, family)
        if model is None:
            raise JobFailed(f"{family} {name!r} is not in this worker's model store")
        if model.manifest is not None:  # where this host's cache has (or will have) it
            assert self.fetcher is not None
            model = replace(model, path=self.fetcher.path_of(model.manifest))
        variant = self.backend.variant if family in ("checkpoint", "upscaler") else ""
        return model, CacheKey.of(model.path, str(self.dtype), self.device, variant)

    def _evict_keys(self, named: str) -> set[CacheKey]:
        """The cache key of the model the dispatcher would have this job's load evict
        (`family:name`, or "" for none); none if this worker does not know it."""
        family, _, name = named.partition(":")
        if family not in FAMILIES or not name:
            return set()
        try:
            return {self._key(family, name)[1]}
        except JobFailed:
            return set()

    def _fetch(self, stack: ExitStack, model: ModelInfo, report: bool = True) -> None:
        """Bring an object-store model onto this host's disk and keep it there until the
        job's stack closes. Arriving bytes are progress for the watchdog; the record's note
        shows "fetching model <name> (43%)" while it lasts."""
        assert self.fetcher is not None and model.manifest is not None
        att, shown = self.current, {"pct": -1, "at": 0.0}

        def on_bytes(done: int, total: int) -> None:
            if att is None:
                return
            att.active()
            pct, now = (100 * done // total if total else 100), time.monotonic()
            first_or_last = shown["pct"] < 0 or (pct == 100 != shown["pct"])
            if now - shown["at"] < 0.5 and not first_or_last:
                return  # at most two Redis writes a second
            shown["at"] = now
            if pct != shown["pct"]:
                shown["pct"] = pct
                self._note(att, f"fetching model {model.name} ({pct}%)")
            self.progress(att, None)  # canceled, superseded, over the time limit: stop

        # Fetching is part of the model_load stage; not `att.wait`: silence is not expected.
        timed = att.timed("model_load") if att is not None else nullcontext()
        try:
            with timed:
                stack.enter_context(self.fetcher.hold(model.manifest, on_bytes if report else None))
        finally:  # fetched, failed or canceled: the note goes before the job's outcome
            if att is not None and shown["pct"] >= 0:
                self._note(att, "")

    def _note(self, att: Attempt, note: str) -> None:
        """The running job's note (what it does besides rendering; "" clears it), written
        if Redis answers: a missed note is no reason to stop the job."""
        with suppress(RedisError):
            self.records.update(att.job_id, JobStatus.RUNNING, att.attempt, note=note)

    def _use(self, stack: ExitStack, family: str, name: str, loader: Loader) -> Any:
        """The loaded model, locked in the cache until the job's stack closes."""
        model, key = self._key(family, name)
        if model.manifest is not None and key not in self.cache:
            self._fetch(stack, model)

        def load() -> Any:
            if model.manifest is not None and not self.fetcher.is_ready(model.manifest):
                self._fetch(stack, model, report=False)  # left this host's disk since
            return loader(model, self.load_device, self.dtype)

        try:
            # The size on disk as a hint, so the cache makes room before the load, not after.
            with self.current.wait("model_load") if self.current else nullcontext():
                return stack.enter_context(
                    self.cache.use(
                        key,
                        load,
                        size_hint=model.size_bytes,
                        on_evict=self.backend.on_evict,
                    )
                )
        except torch.OutOfMemoryError:
            raise  # render_with_retry evicts and tries once more
        except Exception as exc:
            raise JobFailed(f"could not load {family} {name!r}: {exc}") from exc

    @property
    def current_job(self) -> str | None:
        current = self.current
        return current.job_id if current else None

    @property
    def stalled_job(self) -> str | None:
        current = self.current
        return current.job_id if current and current.given_up else None

    def renew_lease(self) -> None:
        """Called by the heartbeat thread: keep the running attempt's lease alive, unless
        the job stalled (the watchdog): then let the lease lapse, so the scheduler runs the
        job elsewhere and this attempt's late writes are refused."""
        current = self.current
        if current is None:
            return
        if current.stalled(self.settings.stall_s):
            if not current.given_up:
                log.error(
                    "job %s made no progress for %.0fs; giving it up to another worker",
                    current.job_id,
                    self.settings.stall_s,
                )
            current.given_up, current.lease_ok = True, False
            return
        if not self.leases.renew(current.job_id, current.attempt, self.name):
            current.lease_ok = False

    def preload(self, checkpoints: list[str]) -> None:
        """Load checkpoints before taking jobs (explicit: nothing else loads at start-up)."""
        for name in checkpoints:
            model, key = self._key("checkpoint", name)
            with ExitStack() as stack:
                if model.manifest is not None:
                    self._fetch(stack, model, report=False)
                self.cache.get(
                    key,
                    lambda m=model: self.backend.load_checkpoint(m, self.load_device, self.dtype),
                    size_hint=model.size_bytes,
                    on_evict=self.backend.on_evict,
                )

    def _image(self, key: str) -> Image.Image:
        try:
            return images.open_rgb(self.storage.get(key))
        except ObjectNotFound:
            raise JobFailed(f"input image {key!r} is missing from storage") from None

    # -- the job kinds ------------------------------------------------------------------------

    def render(self, att: Attempt, spec: AnySpec, stack: ExitStack) -> tuple[np.ndarray, list[str]]:
        def progress(p: float) -> None:
            self.progress(att, p)

        def keep_alive(_: float) -> None:
            self.progress(att, None)

        if isinstance(spec, UpscaleSpec):
            upscaler = self._use(stack, "upscaler", spec.upscaler, self.backend.load_upscaler)
            image = images.to_float(self._image(spec.image))
            height, width = image.shape[:2]
            size = target_size(width, height, spec.scale, spec.width, spec.height)
            result = upscale(upscaler, image, *size, tile=spec.tile, progress=progress)
            return result[None], [upscaler.family]

        base = self._use(stack, "checkpoint", spec.model, self.backend.load_checkpoint)
        addons = pipelines.Addons()
        if spec.vae:
            addons.vae = self._use(stack, "vae", spec.vae, pipelines.load_vae)
        for unit in spec.controlnet:
            addons.controlnets.append(
                self._use(stack, "controlnet", unit.model, pipelines.load_controlnet)
            )
            addons.control_images.append(self._image(unit.image))

        if faults.oom_injected(spec, len(self.cache)):
            raise torch.OutOfMemoryError("out of memory (RENDERFARM_FAULT_OOM_PROMPT)")
        while faults.stall_injected(spec, att) and att.still_ours():
            time.sleep(0.1)
        if isinstance(spec, Img2ImgSpec):
            mask = None
            if spec.mask:
                mask = images.open_mask(self.storage.get(spec.mask), spec.mask_blur)
            init = self._image(spec.init_image)
            return pipelines.img2img(base, spec, addons, init, mask, progress)

        upscale_image = None
        if spec.hires and spec.hires.upscaler != "latent":
            upscaler = self._use(stack, "upscaler", spec.hires.upscaler, self.backend.load_upscaler)

            def upscale_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
                # Between the passes: tiles keep the job alive and cancelable.
                return upscale(upscaler, image, width, height, progress=keep_alive)

        return pipelines.txt2img(base, spec, addons, progress, upscale_image)

    def expected_size(self, spec: AnySpec) -> tuple[int, int]:
        if isinstance(spec, UpscaleSpec):
            width, height = self._image(spec.image).size
            return target_size(width, height, spec.scale, spec.width, spec.height)
        return spec.output_size()

    # -- one job, start to finish ---------------------------------------------------------------

    def run(self, job_id: str, attempt: int) -> None:
        """Run one attempt of a job; every write is fenced by the attempt number."""
        record = self.records.get(job_id)
        if (
            record is None
            or record["attempt"] != attempt
            or record["status"] != JobStatus.DISPATCHED
            # The same attempt dispatched to another worker: after a Redis failover lost a
            # dispatch, the new master's dispatcher may have sent it again elsewhere.
            or record.get("target") != self.name
        ):
            state = (
                "no record"
                if record is None
                else f"{record['status']}, {record['attempt']}, for {record.get('target')}"
            )
            log.info("job %s attempt %s is stale (%s); dropping the task", job_id, attempt, state)
            return
        started = time.time()
        self.leases.take(job_id, attempt, self.name)
        if not self.records.transition(
            job_id,
            JobStatus.RUNNING,
            (JobStatus.DISPATCHED,),
            self._fence(attempt),
            worker=self.name,
            ran_on=self.hardware,  # with render_s at success: the render-time history
            started_at=started,
            attempts=record["attempts"] + 1,
            note="",
        ):
            self.leases.release(job_id, attempt, self.name)
            return
        self.current = Attempt(job_id, attempt)
        if faults.kill_injected(record):
            os._exit(137)
        try:
            with self.cache.evicting_first(self._evict_keys(record.get("evict", ""))):
                self._run(self.current, load_spec(record["spec"]), started)
        finally:
            self.current = None
            self.leases.release(job_id, attempt, self.name)
            self.redis.lpush(keys.wake(), 1)  # a worker is free: dispatch now

    def _run(self, att: Attempt, spec: AnySpec, started: float) -> None:
        try:
            result, passes = self.render_with_retry(att, spec)
            if isinstance(spec, UpscaleSpec) and spec.unload_after:
                self.cache.unload(self._key("upscaler", spec.upscaler)[1])
            outputs.validate(result, spec.output_count(), self.expected_size(spec))
            extra = {
                "worker": self.name,
                "hardware": self.hardware,
                "attempt": att.attempt,
                "passes": passes,
                "render_s": time.time() - started,
            }
            noted: list[str] = []  # the record's notes while storage is retried

            def retrying(note: str) -> None:
                noted.append(note)
                self._note(att, note)

            with att.wait("upload"):  # retries storage errors for RENDERFARM_STORAGE_RETRY_S
                keys_ = outputs.store(
                    self.storage,
                    att.job_id,
                    att.attempt,
                    spec,
                    result,
                    extra,
                    retry_s=self.settings.storage_retry_s,
                    still_ours=att.still_ours,
                    on_retry=retrying,
                )
            if noted:  # stored after all: the note goes before the job's outcome
                self._note(att, "")
        except JobCanceled:
            self._finish(att, JobStatus.CANCELED, error="canceled while running")
            return
        except LeaseLost:
            log.warning("job %s attempt %s lost its lease; stopping", att.job_id, att.attempt)
            return
        except Exception as exc:
            if celery_state.should_terminate:
                # A cold shutdown (Ctrl-C twice, SIGQUIT) broke into the job: Celery's solo
                # pool raises its NotImplementedError here. Not the job's fault: its lease
                # goes with this attempt and the reaper queues it again.
                log.warning("job %s interrupted by the worker's shutdown", att.job_id)
                return
            # Our own errors (JobFailed, OutputError, UpscaleError, the OpenVINO backend's)
            # are RuntimeErrors whose message is the reason; show it plainly.
            known = RuntimeError | ValueError
            reason = str(exc) if isinstance(exc, known) else repr(exc)
            log.exception("job %s failed", att.job_id)
            self._finish(att, JobStatus.FAILED, error=reason)
            self.jobs_failed += 1
            return
        if self._finish(
            att,
            JobStatus.SUCCEEDED,
            outputs=keys_,
            progress=1.0,
            manifest=outputs.manifest_key(att.job_id, att.attempt),
            render_s=f"{extra['render_s']:.3f}",
            # With render_s (which includes loading): the stage histograms (scheduler/census.py).
            load_s=f"{att.stage_s.get('model_load', 0.0):.3f}",
            upload_s=f"{att.stage_s.get('upload', 0.0):.3f}",
        ):
            self.jobs_done += 1

    def _fence(self, attempt: int) -> str:
        """What this worker's writes to a job are fenced by: the attempt as dispatched to
        this worker (the dispatch's identity, also the lease's token)."""
        return lease_token(attempt, self.name)

    def _finish(self, att: Attempt, status: JobStatus, **fields: Any) -> bool:
        """Commit the attempt's outcome if it is still the current attempt.

        Redis may be restarting: retry until it answers, so a finished job is never lost.
        """
        delay = 0.5
        while True:
            try:
                done = self.records.transition(
                    att.job_id,
                    status,
                    (JobStatus.RUNNING,),
                    self._fence(att.attempt),
                    finished_at=time.time(),
                    **fields,
                )
                if not done:
                    log.warning(
                        "job %s attempt %s: not current any more; %s not recorded",
                        att.job_id,
                        att.attempt,
                        status,
                    )
                return done
            except RedisError:
                log.warning("Redis unavailable while finishing job %s; retrying", att.job_id)
                time.sleep(delay)
                delay = min(delay * 2, 10)

    def progress(self, att: Attempt, value: float | None) -> None:
        """Called every denoising step and upscaled tile: record progress (None: keep the
        value), stop if canceled, superseded or over the farm's job time limit."""
        att.active()
        limit = self.settings.job_time_limit_s
        if att.running_s() > limit:
            raise JobFailed(f"ran longer than the job time limit ({limit} s)")
        try:
            fence = self._fence(att.attempt)
            if value is not None and not self.records.set_progress(att.job_id, fence, value):
                rec = self.records.get(att.job_id)
                if rec is None or (rec["attempt"], rec.get("target")) != (att.attempt, self.name):
                    raise LeaseLost(att.job_id)
            if int(self.redis.hget(keys.job(att.job_id), "cancel_requested") or 0):
                raise JobCanceled(att.job_id)
        except RedisError:
            pass  # progress is best effort while Redis restarts; the job goes on
        if not att.still_ours():
            raise LeaseLost(att.job_id)

    def render_with_retry(self, att: Attempt, spec: AnySpec) -> tuple[np.ndarray, list[str]]:
        """Render; out of device memory, evict every model this job does not hold and try
        once more with the job's own models still loaded."""
        with ExitStack() as stack:
            try:
                return self.render(att, spec, stack)
            except torch.OutOfMemoryError as exc:
                log.warning("job %s ran out of device memory; evicting, retrying", att.job_id)
                traceback.clear_frames(exc.__traceback__)  # its frames hold activations
            self.cache.clear()
            release_memory()
            try:
                return self.render(att, spec, stack)  # the same models: cache hits
            except torch.OutOfMemoryError as exc:
                raise JobFailed(
                    f"out of device memory even after evicting cached models: {exc}"
                ) from None


def register(app: Celery, runner: JobRunner) -> None:
    @app.task(name=RUN_JOB)
    def run_job(job_id: str, attempt: int) -> None:
        runner.run(job_id, attempt)
