"""Running one job: record → pipeline → checked output → storage → record."""

from __future__ import annotations

import logging
import time

import torch
from celery import Celery
from redis import Redis

from scheduler.celery_app import RUN_JOB
from scheduler.records import JobRecords
from shared.config import Settings
from shared.jobspec import JobSpec
from shared.modelstore import find_model
from shared.storage import open_storage
from worker import outputs
from worker.cache import ModelCache
from worker.pipelines import LoadedPipeline, load_pipeline, txt2img

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """A job cannot finish; the message is the reason shown to the user."""


class JobRunner:
    def __init__(self, settings: Settings, hardware: str, name: str) -> None:
        self.settings = settings
        self.hardware = hardware
        self.name = name
        self.device = "cpu"
        self.dtype = torch.float32
        self.records = JobRecords(Redis.from_url(settings.redis_url))
        self.storage = open_storage(settings)
        self.cache = ModelCache(max_entries=1)

    def pipeline(self, model_name: str) -> LoadedPipeline:
        model = find_model(model_name, "checkpoint", self.settings.models_dir)
        if model is None:
            raise JobFailed(f"model {model_name!r} is not in this worker's model store")
        key = (str(model.path.resolve()), str(self.dtype), self.device)
        try:
            return self.cache.get(key, lambda: load_pipeline(model, self.device, self.dtype))
        except Exception as exc:
            raise JobFailed(f"could not load model {model_name!r}: {exc}") from exc

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
        try:
            spec = JobSpec.model_validate(record["spec"])
            loaded = self.pipeline(spec.model)
            images = txt2img(loaded, spec, lambda p: self.records.set_progress(job_id, p))
            outputs.validate(images, spec)
            keys = outputs.store(
                self.storage,
                job_id,
                spec,
                images,
                {"worker": self.name, "hardware": self.hardware, "render_s": time.time() - started},
            )
        except Exception as exc:
            reason = str(exc) if isinstance(exc, JobFailed | outputs.OutputError) else repr(exc)
            log.exception("job %s failed", job_id)
            self.records.transition(
                job_id, "failed", ("running",), error=reason, finished_at=time.time()
            )
            return
        self.records.transition(
            job_id, "succeeded", ("running",), outputs=keys, progress=1.0, finished_at=time.time()
        )


def register(app: Celery, runner: JobRunner) -> None:
    @app.task(name=RUN_JOB)
    def run_job(job_id: str) -> None:
        runner.run(job_id)
