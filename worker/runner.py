"""One job: record → cached models → pipeline → checked output → storage → record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch
from celery import Celery
from PIL import Image
from redis import Redis

from scheduler.celery_app import RUN_JOB
from scheduler.records import JobRecords
from shared.config import Settings
from shared.jobspec import AnySpec, Img2ImgSpec, UpscaleSpec, parse_spec
from shared.modelstore import ModelInfo, find_model
from shared.storage import ObjectNotFound, open_storage
from worker import images, outputs, pipelines
from worker.cache import CacheKey, ModelCache
from worker.upscalers import UpscaleError, load_upscaler, target_size, upscale

log = logging.getLogger(__name__)

Loader = Callable[[ModelInfo, str, torch.dtype], Any]


class JobFailed(RuntimeError):
    """A job cannot finish; the message is the reason shown to the user."""


# Memory a CUDA worker leaves outside its model cache for activations while rendering.
CUDA_WORKING_RESERVE = 2 * 2**30


def pick_device(hardware: str, device: str | None) -> tuple[str, torch.dtype]:
    """The torch device and dtype a worker of this class runs jobs on."""
    if hardware != "gpu":
        return "cpu", torch.float32
    if not torch.cuda.is_available():
        raise RuntimeError("a gpu worker needs a CUDA device, and torch sees none")
    device = device or "cuda:0"
    torch.cuda.set_device(device)  # CUDA is initialised here, in the process that runs jobs
    return device, torch.float16


def cache_budget(settings: Settings, device: str) -> int:
    if not device.startswith("cuda"):
        return settings.cache_ram_mb * 2**20
    if settings.cache_vram_mb:
        return settings.cache_vram_mb * 2**20
    total = torch.cuda.get_device_properties(device).total_memory
    return max(total - CUDA_WORKING_RESERVE, total // 2)


class JobRunner:
    def __init__(
        self, settings: Settings, hardware: str, name: str, device: str | None = None
    ) -> None:
        self.settings = settings
        self.hardware = hardware
        self.name = name
        self.device, self.dtype = pick_device(hardware, device)
        self.records = JobRecords(Redis.from_url(settings.redis_url))
        self.storage = open_storage(settings)
        self.cache = ModelCache(cache_budget(settings, self.device), name=self.device)
        self.current_job: str | None = None
        self.jobs_done = 0
        self.jobs_failed = 0

    # -- models, through the one cache every family shares ---------------------------------

    def _key(self, family: str, name: str) -> tuple[ModelInfo, CacheKey]:
        model = find_model(name, family, self.settings.models_dir)
        if model is None:
            raise JobFailed(f"{family} {name!r} is not in this worker's model store")
        return model, CacheKey.of(model.path, str(self.dtype), self.device)

    def _use(self, stack: ExitStack, family: str, name: str, loader: Loader) -> Any:
        """The loaded model, locked in the cache until the job's stack closes."""
        model, key = self._key(family, name)
        try:
            return stack.enter_context(
                self.cache.use(key, lambda: loader(model, self.device, self.dtype))
            )
        except Exception as exc:
            raise JobFailed(f"could not load {family} {name!r}: {exc}") from exc

    def preload(self, checkpoints: list[str]) -> None:
        """Load checkpoints before taking jobs (explicit: nothing else loads at start-up)."""
        for name in checkpoints:
            model, key = self._key("checkpoint", name)
            self.cache.get(key, lambda m=model: pipelines.load_pipeline(m, self.device, self.dtype))

    def _image(self, key: str) -> Image.Image:
        try:
            return images.open_rgb(self.storage.get(key))
        except ObjectNotFound:
            raise JobFailed(f"input image {key!r} is missing from storage") from None

    # -- the job kinds ------------------------------------------------------------------------

    def render(self, job_id: str, spec: AnySpec, stack: ExitStack) -> tuple[np.ndarray, list[str]]:
        def progress(p: float) -> None:
            self.records.set_progress(job_id, p)

        if isinstance(spec, UpscaleSpec):
            upscaler = self._use(stack, "upscaler", spec.upscaler, load_upscaler)
            image = images.to_float(self._image(spec.image))
            height, width = image.shape[:2]
            size = target_size(width, height, spec.scale, spec.width, spec.height)
            return upscale(upscaler, image, *size, tile=spec.tile)[None], [upscaler.family]

        base = self._use(stack, "checkpoint", spec.model, pipelines.load_pipeline)
        addons = pipelines.Addons()
        if spec.vae:
            addons.vae = self._use(stack, "vae", spec.vae, pipelines.load_vae)
        for unit in spec.controlnet:
            addons.controlnets.append(
                self._use(stack, "controlnet", unit.model, pipelines.load_controlnet)
            )
            addons.control_images.append(self._image(unit.image))

        if isinstance(spec, Img2ImgSpec):
            mask = None
            if spec.mask:
                mask = images.open_mask(self.storage.get(spec.mask), spec.mask_blur)
            init = self._image(spec.init_image)
            return pipelines.img2img(base, spec, addons, init, mask, progress)

        upscale_image = None
        if spec.hires and spec.hires.upscaler != "latent":
            upscaler = self._use(stack, "upscaler", spec.hires.upscaler, load_upscaler)

            def upscale_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
                return upscale(upscaler, image, width, height)

        return pipelines.txt2img(base, spec, addons, progress, upscale_image)

    def expected_size(self, spec: AnySpec) -> tuple[int, int]:
        if isinstance(spec, UpscaleSpec):
            width, height = self._image(spec.image).size
            return target_size(width, height, spec.scale, spec.width, spec.height)
        return spec.output_size()

    # -- one job, start to finish ---------------------------------------------------------------

    def run(self, job_id: str) -> None:
        record = self.records.get(job_id)
        if record is None:
            log.warning("job %s has no record; dropping the task", job_id)
            return
        started = time.time()
        if not self.records.transition(
            job_id, "running", ("queued", "running"), worker=self.name, started_at=started
        ):
            log.info("job %s is %s; not running it", job_id, record["status"])
            return
        self.current_job = job_id
        try:
            spec = parse_spec(record["spec"])
            result, passes = self.render_with_retry(job_id, spec)
            if isinstance(spec, UpscaleSpec) and spec.unload_after:
                self.cache.unload(self._key("upscaler", spec.upscaler)[1])
            outputs.validate(result, spec.output_count(), self.expected_size(spec))
            keys = outputs.store(
                self.storage,
                job_id,
                spec,
                result,
                {
                    "worker": self.name,
                    "hardware": self.hardware,
                    "passes": passes,
                    "render_s": time.time() - started,
                },
            )
        except Exception as exc:
            known = JobFailed | outputs.OutputError | UpscaleError | ValueError
            reason = str(exc) if isinstance(exc, known) else repr(exc)
            log.exception("job %s failed", job_id)
            self.records.transition(
                job_id, "failed", ("running",), error=reason, finished_at=time.time()
            )
            self.jobs_failed += 1
            return
        finally:
            self.current_job = None
        self.records.transition(
            job_id, "succeeded", ("running",), outputs=keys, progress=1.0, finished_at=time.time()
        )
        self.jobs_done += 1

    def render_with_retry(self, job_id: str, spec: AnySpec) -> tuple[np.ndarray, list[str]]:
        """Render; out of device memory, evict every model no job holds and try once more."""
        try:
            with ExitStack() as stack:
                return self.render(job_id, spec, stack)
        except torch.OutOfMemoryError:
            log.warning("job %s ran out of device memory; evicting and retrying once", job_id)
        self.cache.clear()
        try:
            with ExitStack() as stack:
                return self.render(job_id, spec, stack)
        except torch.OutOfMemoryError as exc:
            raise JobFailed(
                f"out of device memory even after evicting cached models: {exc}"
            ) from exc


def register(app: Celery, runner: JobRunner) -> None:
    @app.task(name=RUN_JOB)
    def run_job(job_id: str) -> None:
        runner.run(job_id)
