"""The farm's words: job statuses, priorities, hardware classes and job kinds.

Each is a `StrEnum` whose values are the strings stored in Redis and shown in the API, so
a member compares equal to its string and serialises as it.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"  # waiting for dispatch, in its owner's pending set
    DISPATCHED = "dispatched"  # sent to one worker's queue
    RUNNING = "running"  # a worker holds the lease of the current attempt
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in FINAL

    @property
    def view(self) -> str:
        """The status clients see: waiting for dispatch and dispatched are both `queued`."""
        return QUEUED if self in WAITING else self.value


FINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
WAITING = frozenset({JobStatus.PENDING, JobStatus.DISPATCHED})
# Indexed in sets, for the dispatcher and the reaper.
ACTIVE = (JobStatus.DISPATCHED, JobStatus.RUNNING)
# The client-facing name of a waiting job (JobStatus.view).
QUEUED = "queued"


class StatusView(StrEnum):
    """The statuses clients see (`JobStatus.view`): the queue page filters and indexes by them."""

    QUEUED = QUEUED
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """Dispatch order: 0 goes first."""
        return list(Priority).index(self)

    @property
    def celery(self) -> int:
        """The message priority in Celery's Redis transport (0 is the highest)."""
        return self.rank * 3


# Celery's Redis transport keeps one list per step: one per priority.
CELERY_PRIORITY_STEPS = [p.celery for p in Priority]


class Hardware(StrEnum):
    """A worker class: the device family its jobs run on."""

    CPU = "cpu"
    OPENVINO = "openvino"
    GPU = "gpu"


# A job spec may ask for a class or leave it to the dispatcher.
AUTO = "auto"


class JobKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"  # with a mask: inpainting
    UPSCALE = "upscale"
