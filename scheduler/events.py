"""Job events: every change of a job record, in order, from a capped Redis stream.

The records' one Lua script appends an event in the same step as the change it describes
(scheduler/records.py), so a reader that resumes after the last event it saw misses
nothing. Read by the live event stream (`GET /api/v1/events`) and by callers that wait for
a job to finish without polling its record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis

from scheduler.records import JobRecords
from shared import keys
from shared.vocabulary import JobStatus

# Below the Redis client's socket timeout (shared/config.py:redis_client).
MAX_BLOCK_S = 10.0
STOP_CHECK_S = 1.0  # how often a wait asks whether it should stop early


@dataclass(frozen=True)
class JobEvent:
    id: str  # the stream entry's id: resume after it
    job: str
    status: JobStatus
    progress: float
    owner: str
    seq: int
    deleted: bool = False  # the job was deleted (with the status it had)
    note: str = ""  # the record's note (a model being fetched, outputs waiting for storage)

    def as_dict(self) -> dict[str, Any]:
        event = {
            "job": self.job,
            "status": self.status.view,
            "state": self.status,
            "progress": self.progress,
            "owner": self.owner,
            "seq": self.seq,
            "note": self.note,
        }
        return event | {"deleted": True} if self.deleted else event


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> JobEvent:
    f = {k.decode(): v.decode() for k, v in fields.items()}
    return JobEvent(
        entry_id.decode(),
        f["job"],
        JobStatus(f["status"]),
        float(f["progress"]),
        f["owner"],
        int(f["seq"]),
        "deleted" in f,
        f.get("note", ""),
    )


class JobEvents:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def last_id(self) -> str:
        """The id of the newest event ("0-0" if none): read after it for what comes next."""
        newest = self.redis.xrevrange(keys.events(), count=1)
        return newest[0][0].decode() if newest else "0-0"

    def read(self, after: str, block_s: float | None = None, count: int = 500) -> list[JobEvent]:
        """Events after `after`, oldest first; with `block_s`, wait that long for one."""
        block = None if block_s is None else max(1, int(min(block_s, MAX_BLOCK_S) * 1000))
        found = self.redis.xread({keys.events(): after}, count=count, block=block)
        return [_event(i, fields) for _, entries in found for i, fields in entries]

    def wait_final(
        self,
        records: JobRecords,
        job_id: str,
        timeout_s: float,
        stop: Callable[[], bool] = lambda: False,
    ) -> dict[str, Any] | None:
        """The job's record once it is final, woken by its event; or as it is at the timeout,
        or once `stop()` is true (None if there is no such job)."""
        after = self.last_id()  # before reading the record: no change can fall in between
        deadline = time.monotonic() + timeout_s
        record = records.get(job_id)
        while record is not None and not record["status"].final:
            left = deadline - time.monotonic()
            if left <= 0 or stop():
                break
            for event in self.read(after, block_s=min(left, STOP_CHECK_S)):
                after = event.id
                if event.job == job_id and event.status.final:
                    return records.get(job_id)
        return record
