"""Retention: finished jobs deleted after `keep_jobs_days`, and deleted jobs' objects
removed from storage.

Deleting a job (`DELETE /api/v1/jobs/<id>`, or expiry here) removes its record in one Lua
step (`JobRecords.delete`) and lists its storage objects in the trash (`keys.trash()`):
its folders `jobs/<id>/` (every attempt's outputs and manifest) and `thumbs/<id>/`, and the
input images no other job names. The dispatcher process runs `step()` every few seconds:
it empties the trash, then, at most once a minute, deletes jobs that finished more than
`keep_jobs_days` ago, a bounded number per step. A crash between the record's deletion
and the objects' leaves them listed in the trash, not orphaned. An input image written in
the last INPUT_GRACE_S waits aside (`keys.trash_later()`) until it may go.
"""

from __future__ import annotations

import logging
import time

from redis import Redis

from scheduler.records import Deleted, JobRecords
from shared import keys
from shared.config import Settings
from shared.storage import Storage

log = logging.getLogger(__name__)

TRASH_BATCH = 200  # storage keys (or folders) deleted per step
EXPIRE_BATCH = 200  # jobs deleted per step (the rest wait for the next)
EXPIRE_SCAN_PAGES = 10  # pages of old jobs read per step, past ones still active
EXPIRE_EVERY_S = 60.0
INPUT_GRACE_S = 600.0  # an input image written this recently is not deleted yet
FIELDS = ("status", "priority", "created_at", "finished_at")  # of a job, to expire it


class Retention:
    def __init__(self, redis: Redis, storage: Storage, settings: Settings) -> None:
        self.redis = redis
        self.records = JobRecords(redis)
        self.storage = storage
        self.keep_s = settings.keep_jobs_days * 86400
        self._next_expiry = float("-inf")

    def step(self) -> tuple[int, int]:
        """Empty (part of) the trash, and expire old jobs when due; (objects, jobs) deleted."""
        expired = 0
        now = time.monotonic()
        if self.keep_s and now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY_S
            expired = self.expire(time.time() - self.keep_s)
        return self.empty_trash(), expired

    def expire(self, before: float) -> int:
        """Delete up to EXPIRE_BATCH jobs that finished before `before` (a Unix time); how
        many. Jobs are read oldest created first; a queued or running one is passed over."""
        deleted, offset = 0, 0
        for _ in range(EXPIRE_SCAN_PAGES):
            ids = [
                i.decode()
                for i in self.redis.zrangebyscore(
                    keys.jobs_index(), "-inf", before, start=offset, num=EXPIRE_BATCH
                )
            ]
            for job_id, rec in zip(ids, self.records.fields_of(ids, FIELDS), strict=True):
                done = rec is not None and rec["status"].final
                old = done and rec.get("finished_at", rec["created_at"]) < before
                if old and self.records.delete(job_id) is Deleted.DELETED:
                    deleted += 1
                else:
                    offset += 1  # still queued, running, or finished since `before`: kept
            if not ids or deleted >= EXPIRE_BATCH:
                break
        if deleted:
            log.info(
                "retention: deleted %d %s finished more than %g days ago",
                deleted,
                "job" if deleted == 1 else "jobs",
                self.keep_s / 86400,
            )
        return deleted

    def empty_trash(self) -> int:
        """Delete the objects the first TRASH_BATCH trash entries name; how many objects."""
        now = time.time()
        due = self.redis.zrangebyscore(keys.trash_later(), "-inf", now, 0, TRASH_BATCH)
        if due:  # input images whose grace period is over: back in the trash, at once
            self.redis.pipeline().rpush(keys.trash(), *due).zrem(keys.trash_later(), *due).execute()
        entries = [e.decode() for e in self.redis.lrange(keys.trash(), 0, TRASH_BATCH - 1)]
        removed, later = 0, {}
        for key in entries:
            if key.endswith("/"):  # a deleted job's folder
                removed += self.storage.delete(key)
                continue
            # An input image no job named when its last one was deleted: a submission may
            # be about to name it again (it writes the image, then records the job), so it
            # waits while freshly written, and while a job names it it is not deleted.
            if self.redis.hexists(keys.input_refs(), key):
                continue
            age = self.storage.age_s(key)
            if age is not None and age < INPUT_GRACE_S:
                later[key] = now + INPUT_GRACE_S - age
            elif age is not None:
                removed += self.storage.delete(key)
        if entries:
            pipe = self.redis.pipeline()
            if later:
                pipe.zadd(keys.trash_later(), later)
            for key in entries:  # these, not the list's head: another step may share it
                pipe.lrem(keys.trash(), 1, key)
            pipe.execute()
        return removed
