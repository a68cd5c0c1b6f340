"""Requests that hold a server thread for long: an event stream (`GET /api/v1/events`) and a
blocking SD-WebUI call (`/sdapi/v1/txt2img`, `img2img`, `extra-*-image`), which waits for
its jobs. Each holds one of the process's `http_threads` until it ends, and waitress queues
every other request behind them, so without a bound one account's open streams or calls
could leave no thread for anyone: the dashboard would hang for the whole team.

So each server process counts them: one account may hold `http_held_per_account` at once
(past that, 429), and all accounts together three quarters of the threads (past that, 503),
the last quarter always free for ordinary requests. The counts are the process's own, as
its threads are.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import request

RETRY_AFTER_S = 5


def client_gone() -> Callable[[], bool]:
    """Whether the request's client has closed its connection: waitress tells, as it keeps
    reading a connection while its request runs (`channel_request_lookahead`,
    dashboard/server.py). A long request that asks stops holding a thread for no one."""
    return request.environ.get("waitress.client_disconnected") or (lambda: False)


class HoldRefused(Exception):
    """A long request this process will not take now: `status` 429 (the account holds its
    share) or 503 (the process holds all it may)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Holds:
    def __init__(self, threads: int, per_account: int) -> None:
        self.most = max(1, threads * 3 // 4)
        self.per_account = per_account
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, account: str) -> None:
        """Count one more long request of `account`, or raise HoldRefused; each take is
        followed by one `release`."""
        with self._lock:
            if self._held[account] >= self.per_account:
                raise HoldRefused(
                    429,
                    f"{account} already has {self._held[account]} event streams and blocking "
                    f"SD-WebUI calls open on this server, the most one account may "
                    f"(RENDERFARM_HTTP_HELD_PER_ACCOUNT); close one or wait for it",
                )
            if self._held.total() >= self.most:
                raise HoldRefused(
                    503,
                    f"this server holds {self.most} event streams and blocking SD-WebUI "
                    f"calls, the most it keeps open (3/4 of RENDERFARM_HTTP_THREADS); "
                    f"try again shortly",
                )
            self._held[account] += 1

    @contextmanager
    def holding(self, account: str) -> Iterator[None]:
        """`take` for the block's length."""
        self.take(account)
        try:
            yield
        finally:
            self.release(account)

    def release(self, account: str) -> None:
        with self._lock:
            self._held[account] -= 1
            if self._held[account] <= 0:
                del self._held[account]
