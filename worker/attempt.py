"""One attempt of a job on this worker: its state for the watchdog, and how it ends early."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class JobFailed(RuntimeError):
    """A job cannot finish; the message is the reason shown to the user."""


class JobCanceled(Exception):
    """The user canceled the running job; raised from the step callback."""


class LeaseLost(Exception):
    """This attempt is no longer the job's current one (its lease expired and it was
    requeued): stop, and write nothing more."""


@dataclass
class Attempt:
    job_id: str
    attempt: int
    lease_ok: bool = True  # cleared by the heartbeat when renewing the lease fails
    given_up: bool = False  # set by the watchdog: no progress for RENDERFARM_STALL_S
    started: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    waiting: int = 0  # > 0 while a model loads or outputs upload: silence is expected then
    # Seconds spent per waiting stage ("model_load", "upload"), for the job's record.
    stage_s: dict[str, float] = field(default_factory=dict)

    def still_ours(self) -> bool:
        return self.lease_ok

    def active(self) -> None:
        """The job moved on: a denoising step, an upscaled tile."""
        self.last_active = time.monotonic()

    @contextmanager
    def wait(self, stage: str) -> Iterator[None]:
        """A phase that reports no progress but is not stuck (each bounded on its own); its
        time is added to `stage_s[stage]`."""
        self.waiting += 1
        try:
            with self.timed(stage):
                yield
        finally:
            self.waiting -= 1
            self.active()

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the block's time to `stage_s[stage]` (the job's stage histograms)."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.stage_s[stage] = self.stage_s.get(stage, 0.0) + time.monotonic() - began

    def stalled(self, stall_s: float) -> bool:
        return not self.waiting and time.monotonic() - self.last_active > stall_s

    def running_s(self) -> float:
        return time.monotonic() - self.started
