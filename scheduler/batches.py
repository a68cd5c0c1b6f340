"""Batches: one request for many images becomes many jobs that several workers share.

A batch is either a list of specs, or one spec whose `batch_count` is split into that
many jobs (each of `batch_size` images, seeds continuing as in a single job). The batch
record only lists its children; its status and progress are derived from theirs.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from scheduler.submit import Scheduler
from shared import keys
from shared.jobspec import AnySpec, DiffusionSpec


def split(spec: AnySpec) -> list[AnySpec]:
    """One job per batch of a spec with batch_count > 1; seeds continue across them."""
    if not isinstance(spec, DiffusionSpec) or spec.batch_count == 1:
        return [spec]
    spec = spec.with_seed()
    assert spec.seed is not None
    return [
        spec.model_copy(update={"batch_count": 1, "seed": seed})
        for seed in spec.image_seeds()[:: spec.batch_size]
    ]


def aggregate(children: list[dict[str, Any]]) -> tuple[str, float]:
    """A batch's status and progress from its jobs'."""
    statuses = [c["status"] for c in children]
    progress = sum(
        1.0 if s == "succeeded" else c["progress"] for s, c in zip(statuses, children, strict=True)
    ) / len(children)
    if any(s == "running" for s in statuses):
        return "running", progress
    if any(s in ("pending", "dispatched") for s in statuses):
        return ("running" if any(s != "pending" for s in statuses) else "queued"), progress
    for final in ("failed", "canceled"):
        if final in statuses:
            return final, progress
    return "succeeded", progress


class Batches:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.redis = scheduler.redis

    def submit(self, specs: list[AnySpec], owner: str, priority: str) -> dict[str, Any]:
        # Check everything first, so a bad spec anywhere queues nothing.
        for spec in specs:
            self.scheduler.check_models(spec)
        jobs = [
            self.scheduler.submit(child, owner, priority)[0]
            for spec in specs
            for child in split(spec)
        ]
        batch_id = uuid.uuid4().hex
        self.redis.hset(
            keys.batch(batch_id),
            mapping={
                "id": batch_id,
                "owner": owner,
                "created_at": time.time(),
                "children": json.dumps([job["id"] for job in jobs]),
            },
        )
        return self.get(batch_id)  # type: ignore[return-value]

    def get(self, batch_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(keys.batch(batch_id))
        if not raw:
            return None
        batch = {k.decode(): v.decode() for k, v in raw.items()}
        ids = json.loads(batch["children"])
        children = [self.scheduler.records.get(i) for i in ids]
        children = [c for c in children if c is not None]
        status, progress = aggregate(children)
        return {
            "id": batch_id,
            "owner": batch["owner"],
            "created_at": float(batch["created_at"]),
            "status": status,
            "progress": progress,
            "jobs": children,
        }

    def cancel(self, batch_id: str) -> dict[str, Any] | None:
        batch = self.get(batch_id)
        if batch is None:
            return None
        for job in batch["jobs"]:
            if job["status"] in ("pending", "dispatched", "running"):
                self.scheduler.cancel(job["id"])
        return self.get(batch_id)
