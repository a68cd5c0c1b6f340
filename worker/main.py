"""`renderfarm worker`: a Celery worker process for one hardware class."""

from __future__ import annotations

import os
import socket

from celery.signals import worker_ready

from scheduler.celery_app import make_celery
from scheduler.fleet import drain
from shared import keys
from shared.config import Settings, redis_client
from shared.vocabulary import Hardware
from worker.attempt import JobFailed
from worker.heartbeat import Heartbeat
from worker.runner import JobRunner, register


class PreloadFailed(Exception):
    """A --preload checkpoint the worker cannot load: it stops before it takes a job."""


def run_worker(
    settings: Settings,
    hardware: Hardware,
    loglevel: str = "INFO",
    preload: list[str] | None = None,
    device: str | None = None,
) -> None:
    if hardware == Hardware.OPENVINO and device:
        settings = settings.model_copy(update={"openvino_device": device})
        device = None
    name = f"{hardware}-{os.getpid()}@{socket.gethostname()}"
    app = make_celery(settings)
    runner = JobRunner(settings, hardware, name, device)
    for checkpoint in preload or []:
        try:
            runner.preload([checkpoint])
        except JobFailed as exc:
            raise PreloadFailed(f"--preload {checkpoint}: {exc}") from None
    register(app, runner)
    redis = redis_client(settings)
    # A drain flag under this name was left for an earlier process (a container restarted
    # in its pod keeps its host name, often its pid): this one starts taking jobs.
    drain(redis, name, False)
    heartbeat = Heartbeat(runner, redis, settings.heartbeat_s)
    # Beat once the worker consumes its queue, so the fleet only lists workers taking jobs.
    worker_ready.connect(lambda **_: heartbeat.start(), weak=False)
    # The solo pool runs jobs in this process: the model cache lives across jobs and
    # CUDA is initialised in the process that runs them.
    try:
        app.worker_main(
            [
                "worker",
                "--queues",  # only its own: the dispatcher picks the worker for every job
                keys.worker_queue(name),
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--hostname",
                name,
                "--loglevel",
                loglevel,
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        heartbeat.stop()
