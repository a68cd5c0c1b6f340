"""Webhooks: a JSON POST to an account's URL when one of its jobs succeeds or fails.

A thread of the `renderfarm scheduler` process follows the job events stream
(scheduler/events.py) and remembers the last event it handled in Redis, so a restart
resumes there (what was being sent at that moment may be sent again). Sends run on a small
pool, each tried `webhook_attempts` times with doubling backoff: a slow or dead receiver
never holds up the stream, a worker or the dispatcher. The URL comes from the hash
`keys.webhooks()`, which the accounts code writes. One notifier per farm holds a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import requests
from redis import Redis
from redis.exceptions import RedisError
from urllib3.exceptions import MaxRetryError

from scheduler.events import JobEvents
from scheduler.records import JobRecords
from shared import keys
from shared.addresses import inside_address
from shared.config import Settings
from shared.outage import Outage
from shared.vocabulary import JobStatus

log = logging.getLogger(__name__)
NOTIFIED = {JobStatus.SUCCEEDED: "job.succeeded", JobStatus.FAILED: "job.failed"}
LOCK_MS = 10_000


def job_payload(record: dict[str, Any]) -> dict[str, Any]:
    """The job as a webhook carries it: what the REST API shows, without input images."""
    spec = {k: v for k, v in record["spec"].items() if k not in ("init_image", "mask", "image")}
    return {
        "id": record["id"],
        "status": record["status"].view,
        "owner": record["owner"],
        "submitted_by": record.get("submitted_by") or record["owner"],
        "priority": record["priority"],
        "attempts": record["attempts"],
        "spec": spec,
        "seeds": record["seeds"],
        "worker": record.get("worker"),
        "error": record.get("error") or None,
        "outputs": [
            {"index": i, "url": f"/api/v1/jobs/{record['id']}/outputs/{i}"}
            for i in range(len(record.get("outputs", [])))
        ],
        "batch": record.get("batch") or None,
        "created_at": record["created_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
    }


def shown(url: str) -> str:
    """A webhook URL as a log may show it: scheme, host and port. Its user info, path and
    query are left out: they may be the secret (a Slack or Discord hook's path is its key)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


def reason(exc: requests.RequestException) -> str:
    """Why a POST failed, in words without the URL: requests' own message quotes its path
    and query, so it is the error under urllib3's retry wrapper (connection refused, name
    not resolved, timed out, TLS), or only the kind of error when its words are the URL's."""
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError):
        cause = cause.reason
    return f"{type(exc).__name__}: {cause}" if isinstance(cause, Exception) else type(exc).__name__


class Notifier:
    def __init__(self, redis: Redis, settings: Settings, pool_size: int = 4) -> None:
        self.redis = redis
        self.settings = settings
        self.records = JobRecords(redis)
        self.events = JobEvents(redis)
        self.pool = ThreadPoolExecutor(pool_size, thread_name_prefix="webhook")
        self.session = requests.Session()
        self.name = f"notifier-{time.time_ns()}"
        self.stopped = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name="notifier", daemon=True)
        thread.start()
        return thread

    def _holds_lock(self) -> bool:
        lock = keys.notifier_lock()
        if self.redis.set(lock, self.name, px=LOCK_MS, nx=True):
            return True
        if self.redis.get(lock) == self.name.encode():
            self.redis.pexpire(lock, LOCK_MS)
            return True
        return False

    def run_forever(self) -> None:
        outage = Outage(
            log, "Redis unavailable; the notifier retries", "the notifier reaches Redis again"
        )
        while not self.stopped.is_set():
            try:
                leading = self._holds_lock()
                outage.over()  # Redis answered
                if not leading:
                    self.stopped.wait(1)
                    continue
                self.step(block_s=2)
            except RedisError as exc:
                outage.failed(exc)
                self.stopped.wait(1)

    def step(self, block_s: float) -> int:
        """Handle the events after the last one handled; how many webhooks were queued."""
        last = self.redis.get(keys.notifier_last_id())
        # First start: from now on (the farm's history is not replayed).
        after = last.decode() if last else self.events.last_id()
        queued = 0
        for event in self.events.read(after, block_s=block_s):
            after = event.id
            if event.status in NOTIFIED and (url := self.redis.hget(keys.webhooks(), event.owner)):
                record = self.records.get(event.job)
                if record is not None:
                    body = {"event": NOTIFIED[event.status], "job": job_payload(record)}
                    self.pool.submit(self.send, url.decode(), body)
                    queued += 1
        self.redis.set(keys.notifier_last_id(), after)
        return queued

    def send(self, url: str, body: dict[str, Any]) -> bool:
        delay = self.settings.webhook_backoff_s
        for attempt in range(1, self.settings.webhook_attempts + 1):
            try:
                # Checked on every try: a name may resolve elsewhere than when it was set.
                if not self.settings.webhook_allow_private and (why := inside_address(url)):
                    log.warning(
                        "webhook %s for job %s refused: %s", shown(url), body["job"]["id"], why
                    )
                    return False
                # A redirect is not followed: it could point anywhere, inside the farm too.
                resp = self.session.post(
                    url, json=body, timeout=self.settings.webhook_timeout_s, allow_redirects=False
                )
                if 200 <= resp.status_code < 300:
                    return True
                why = f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                why = reason(exc)
            log.warning(
                "webhook %s for job %s, try %d: %s", shown(url), body["job"]["id"], attempt, why
            )
            if attempt < self.settings.webhook_attempts and self.stopped.wait(delay):
                break
            delay *= 2
        return False

    def stop(self) -> None:
        self.stopped.set()
        self.pool.shutdown(wait=False)
