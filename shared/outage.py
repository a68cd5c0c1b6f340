"""A dependency's outage in the log: its first failure with the traceback, then one line per
retry, and its end — not a traceback every second while Redis fails over."""

from __future__ import annotations

import logging
import time


class Outage:
    def __init__(self, log: logging.Logger, what: str, back: str) -> None:
        self.log = log
        self.what = what  # e.g. "Redis unavailable; the notifier retries"
        self.back = back  # e.g. "the notifier reaches Redis again"
        self.since: float | None = None

    def failed(self, exc: BaseException) -> None:
        """A call failed: log it (the traceback only for the outage's first failure)."""
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning(self.what, exc_info=exc)
        else:
            down_s = time.monotonic() - self.since
            self.log.warning("%s (for %.0f s: %s)", self.what, down_s, exc)

    def over(self) -> None:
        """A call succeeded: log the outage's end, if there was one."""
        if self.since is not None:
            self.log.info("%s after %.0f s", self.back, time.monotonic() - self.since)
            self.since = None
