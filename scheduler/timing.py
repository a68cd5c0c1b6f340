"""Render-time history: the rolling median `render_s` per timing class and hardware class.

A job's timing class is its model, output size and steps (`timing_of`), kept on its record;
when a job succeeds, the records' Lua step pushes the worker's `render_s` onto the list of
(its class, the hardware it ran on), capped at `HISTORY` entries.
"""

from __future__ import annotations

import statistics

from redis import Redis

from shared import keys
from shared.jobspec import AnySpec, UpscaleSpec

HISTORY = 50


def model_of(spec: AnySpec) -> str:
    """The model a job is known by: its checkpoint, or an upscale's upscaler."""
    return spec.upscaler if isinstance(spec, UpscaleSpec) else spec.model


def timing_of(spec: AnySpec) -> str:
    """`model|WxH|steps` (an upscale: `upscaler|xSCALE` or `upscaler|WxH`, steps 0)."""
    if isinstance(spec, UpscaleSpec):
        size = f"x{spec.scale:g}" if spec.scale is not None else f"{spec.width}x{spec.height}"
        return f"{spec.upscaler}|{size}|0"
    width, height = spec.output_size()
    return f"{spec.model}|{width}x{height}|{spec.steps}"


class RenderTimes:
    """Medians read once and kept for the life of this object (one per request)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._medians: dict[tuple[str, str], float | None] = {}

    def prefetch(self, pairs: set[tuple[str, str]]) -> None:
        """Read the medians of many (hardware, timing) pairs in one round trip."""
        todo = sorted(p for p in pairs if p not in self._medians)
        if not todo:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for hardware, timing in todo:
                pipe.lrange(keys.render_times(hardware, timing), 0, HISTORY - 1)
            found = pipe.execute()
        for pair, values in zip(todo, found, strict=True):
            self._medians[pair] = statistics.median(map(float, values)) if values else None

    def median(self, hardware: str, timing: str) -> float | None:
        self.prefetch({(hardware, timing)})
        return self._medians[(hardware, timing)]

    def best(self, classes: list[str], timing: str) -> float | None:
        """The fastest median among `classes` that have history (None if none has)."""
        self.prefetch({(c, timing) for c in classes})
        known = [m for c in classes if (m := self._medians[(c, timing)]) is not None]
        return min(known) if known else None
