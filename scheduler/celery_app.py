"""The Celery app every component builds from the same settings.

The dispatcher only *sends* tasks by name, each to the chosen worker's own queue
(`worker.<name>`); workers register the task body (`worker.runner`). So the API never
imports torch, and both sides agree on one configuration.
"""

from __future__ import annotations

from functools import cache

from celery import Celery

from shared.config import Settings
from shared.sentinel import is_sentinel_url
from shared.vocabulary import CELERY_PRIORITY_STEPS

RUN_JOB = "renderfarm.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("renderfarm", broker=settings.redis_url)
    # Redis re-delivers an unacked task after the visibility timeout: keep it well
    # above the longest job, and set it wherever the transport reads it.
    transport = {
        "visibility_timeout": settings.job_time_limit_s * 2,
        # Redis priority support: each priority's messages wait in their own list and are
        # taken best first (Priority.celery).
        "priority_steps": CELERY_PRIORITY_STEPS,
        "queue_order_strategy": "priority",
    }
    if is_sentinel_url(settings.redis_url):
        # kombu's sentinel transport: the URL lists the sentinels; they name the master.
        # Timeouts: a master that vanishes without closing its connections (a partition, not
        # a crash) becomes an error and a reconnection, not a wait without end (celery #6348).
        timeouts = {"socket_timeout": 30.0, "socket_connect_timeout": 5.0}
        transport.update(timeouts, master_name=settings.redis_sentinel_master)
        transport["socket_keepalive"] = True
        if settings.redis_sentinel_password:
            secret = settings.redis_sentinel_password.get_secret_value()
            # Given sentinel_kwargs, redis-py uses only them for the sentinels: timeouts too.
            transport["sentinel_kwargs"] = {**timeouts, "password": secret}
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        # Job records in Redis are the source of truth; Celery results are not used.
        task_ignore_result=True,
        # Long GPU jobs: ack only when done, requeue if the worker dies, take one at a time.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=transport["visibility_timeout"],
        broker_connection_retry_on_startup=True,
        # Task events on, so Flower and `celery events` can watch the fleet.
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


def __getattr__(name: str) -> Celery:
    # `celery --app scheduler.celery_app flower | inspect ...` looks up a module attribute
    # `app`: built from the environment's settings on first use, so importing this module
    # (the dispatcher, the worker, the API) reads no environment and builds no app.
    if name == "app":
        return _env_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _env_app() -> Celery:
    return make_celery(Settings())
