"""A worker's heartbeat: what it is, what it holds and what it is doing, every few seconds.

A thread in the worker process writes one JSON document to Redis with a TTL of three
intervals, so a worker that dies (or hangs without beating) ages out on its own. It also
beats as soon as its model cache changed (a load, an eviction), and says so in
`keys.fleet_changed()`: the dispatcher routes by what each worker holds, and a view one
interval old is many jobs old on a busy farm.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from redis import Redis

from scheduler.fleet import is_draining
from shared import keys
from shared.modelstore import FAMILIES, FOLDERS
from shared.outage import Outage

if TYPE_CHECKING:
    from worker.runner import JobRunner

log = logging.getLogger(__name__)
FAMILY_OF = {folder: family for family, folder in FOLDERS.items()}
CHANGE_POLL_S = 0.05  # how often the thread looks whether the cache changed
VERSIONS = ("renderfarm", "torch", "diffusers", "transformers", "openvino", "celery")


def _versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


class Heartbeat:
    def __init__(self, runner: JobRunner, redis: Redis, interval_s: float) -> None:
        self.runner = runner
        self.redis = redis
        self.interval_s = interval_s
        self.started_at = time.time()
        self.versions = _versions()
        self._store: dict[str, list[str]] = {family: [] for family in FAMILIES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def document(self, list_store: bool = True) -> dict[str, Any]:
        """The heartbeat; `list_store`: list the model store again (else the last list)."""
        runner = self.runner
        cache = runner.cache.stats()
        entries = cache["entries"]
        compiled = [e for e in entries if e["device"].startswith("openvino:")]
        return {
            "name": runner.name,
            "hardware": runner.hardware,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **runner.backend.device_info(),
            "process_rss": psutil.Process().memory_info().rss,
            "cache_budget": cache["budget_bytes"],
            "cache_bytes": cache["bytes_in_use"],
            "models": [
                {
                    "name": Path(e["path"]).stem,
                    "family": FAMILY_OF[Path(e["path"]).parent.name],
                    "path": e["path"],
                    "size_bytes": e["size_bytes"],
                    "locks": e["locks"],
                    "tier": e["tier"],
                    "cost_s": e["cost_s"],  # what loading it again would take
                }
                for e in entries
                if Path(e["path"]).parent.name in FAMILY_OF
            ],
            # The rest of the cache: OpenVINO compiled variants (one per model part and shape).
            "compiled": {
                "variants": len(compiled),
                "bytes": sum(e["size_bytes"] for e in compiled),
            },
            # What this worker can run: the dispatcher routes `hardware: auto` jobs by it.
            "kinds": list(runner.kinds),
            "store": self.store() if list_store else self._store,
            "model_fetch": runner.fetcher.stats() if runner.fetcher else None,
            "draining": is_draining(self.redis, runner.name),
            "cache": {k: v for k, v in cache.items() if k != "entries"},
            "current_job": runner.current_job,
            "stalled_job": runner.stalled_job,
            "jobs_done": runner.jobs_done,
            "jobs_failed": runner.jobs_failed,
            "versions": self.versions,
            "started_at": self.started_at,
            "seen_at": time.time(),
        }

    def store(self) -> dict[str, list[str]]:
        """The models this worker can run, by family, from its model store (an object
        store's manifests); the last answer while the store does not answer."""
        try:
            self._store = {family: self.runner.store.names(family) for family in FAMILIES}
        except Exception:
            log.warning("could not list the model store %s", self.runner.store.location)
        return self._store

    def beat(self, cache_changed: bool = False, between: bool = False) -> None:
        """Write the heartbeat; `cache_changed`: tell the dispatcher; `between`: an extra
        beat between intervals (for the cache): the lease and the store list wait."""
        if not between:
            self.runner.renew_lease()
        ttl_ms = int(self.interval_s * 3 * 1000)
        document = self.document(list_store=not between)
        with self.redis.pipeline() as pipe:
            pipe.set(keys.worker(self.runner.name), json.dumps(document), px=ttl_ms)
            pipe.sadd(keys.workers_index(), self.runner.name)
            if cache_changed:
                pipe.sadd(keys.fleet_changed(), self.runner.name)
            pipe.execute()

    def _loop(self) -> None:
        outage = Outage(log, "heartbeat failed; beating again next interval", "heartbeats again")
        seen = self.runner.cache.version
        # A job started or ended is beaten at once too: what the Workers page, `renderfarm
        # workers` and renderfarm_workers{state} say (busy, idle) follows it, not the interval.
        seen_job = self.runner.current_job
        due = time.monotonic() + self.interval_s
        while not self._stop.wait(min(CHANGE_POLL_S, self.interval_s)):
            version, job, now = self.runner.cache.version, self.runner.current_job, time.monotonic()
            if version == seen and job == seen_job and now < due:
                continue
            try:
                self.beat(cache_changed=version != seen, between=now < due)
                seen, seen_job = version, job
                if now >= due:
                    due = now + self.interval_s
                outage.over()
            except Exception as exc:  # Redis away for a moment: beat again next interval
                outage.failed(exc)
                due = now + self.interval_s

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and say goodbye, so the fleet view drops this worker at once."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout=self.interval_s)
        self.redis.delete(keys.worker(self.runner.name))
        self.redis.srem(keys.workers_index(), self.runner.name)
