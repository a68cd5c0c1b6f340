"""A GPU worker's two cache tiers: models run from VRAM, and wait in RAM between uses.

Models always load from disk into RAM (on the CPU, in the job dtype) and move to the GPU for
a job. When VRAM needs room, a model no job holds (the one its eviction policy picks) moves
back to RAM instead of being dropped, and its next job moves it back without reading the
disk; RAM has its own budget and drops the models its own policy picks. A model is in
exactly one tier. For the `cost` policy, a VRAM entry weighs what its last move to the GPU
took, and a model waiting in RAM weighs its last load from disk (what dropping it costs),
not the move that brought it there.

A checkpoint larger than the whole VRAM budget (or every checkpoint, with
`RENDERFARM_CPU_OFFLOAD=always`) stays in RAM and runs with diffusers' model CPU offload:
each component moves to the GPU while it runs, so the GPU needs room for the largest one.

Both tiers are `ModelCache`s: sizes measured from the weights, the eviction policy among
unlocked entries, stats for the heartbeat. `TieredCache` has the methods the worker uses on a
`ModelCache` (`use`, `get`, `unload`, `clear`, `stats`, `len`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import torch

from worker.cache import CacheKey, ModelCache, OnEvict
from worker.memory import measure_bytes
from worker.pipelines import LoadedPipeline
from worker.upscalers import Upscaler

log = logging.getLogger(__name__)

T = TypeVar("T")
Offload = Literal["auto", "always", "never"]
OFFLOAD = "offload"  # the cache key variant of a checkpoint that runs with CPU offload


def move(value: T, device: str) -> T:
    """Put a cached model's weights on `device`, in place; returns the same object."""
    if isinstance(value, LoadedPipeline):
        value.pipe.to(device)
    elif isinstance(value, Upscaler):
        value.model.to(device)
        value.device = torch.device(device)
    elif isinstance(value, torch.nn.Module):
        value.to(device)
    else:
        raise TypeError(f"cannot move a {type(value).__name__} between devices")
    return value


class TieredCache:
    """VRAM (`fast`) backed by RAM (`slow`) for the models of one CUDA device.

    Loaders passed to `use` and `get` must load onto the CPU: the cache moves the result.
    """

    def __init__(
        self, fast: ModelCache, slow: ModelCache, device: str, offload: Offload = "auto"
    ) -> None:
        self.fast = fast
        self.slow = slow
        self.device = device
        self.offload = offload
        # Host key -> seconds its last load from disk took, while the model is in a tier.
        self._disk_s: dict[CacheKey, float] = {}

    def _offloads(self, size_hint: int | None) -> bool:
        if self.offload == "auto":
            return size_hint is not None and size_hint > self.fast.budget_bytes
        return self.offload == "always"

    @contextmanager
    def use(
        self,
        key: CacheKey,
        loader: Callable[[], T],
        *,
        size_hint: int | None = None,
        on_evict: OnEvict | None = None,
    ) -> Iterator[T]:
        """The model on the GPU (or set up for CPU offload), locked until the block exits."""
        if self._offloads(size_hint):
            offload_key = dataclasses.replace(self._host(key), variant=OFFLOAD)
            with self.slow.use(
                offload_key, lambda: self._load_offloaded(loader), size_hint=size_hint
            ) as value:
                if isinstance(value, LoadedPipeline):
                    # Components take turns on the GPU: give them all the VRAM there is.
                    self.fast.clear()
                    try:
                        yield value
                    finally:
                        # The last component to run stays on the GPU until hooks are reset.
                        value.pipe.maybe_free_model_hooks()
                    return
            self.slow.unload(offload_key)  # not a pipeline: it runs from VRAM after all
        with self.fast.use(
            key,
            lambda: self._promote(key, loader),
            size_hint=size_hint,
            on_evict=lambda value: self._demote(key, value, on_evict),
        ) as value:
            yield value

    def get(
        self,
        key: CacheKey,
        loader: Callable[[], T],
        *,
        size_hint: int | None = None,
        on_evict: OnEvict | None = None,
    ) -> T:
        """Load into VRAM ahead of a job (a worker's preload); not locked."""
        with self.use(key, loader, size_hint=size_hint, on_evict=on_evict) as value:
            return value

    def _promote(self, key: CacheKey, loader: Callable[[], T]) -> T:
        """A VRAM miss: the model from RAM if it waits there, else from disk; to the GPU."""
        host = self._host(key)
        value = self.slow.take(host)
        if value is None:
            started = time.perf_counter()
            value = loader()
            self._disk_s[host] = time.perf_counter() - started
        return move(value, key.device)

    def _demote(self, key: CacheKey, value: Any, on_evict: OnEvict | None) -> None:
        """Leaving VRAM: back to RAM, where `on_evict` runs when it leaves RAM too."""
        host = self._host(key)

        def gone(value: Any) -> None:
            self._disk_s.pop(host, None)
            if on_evict is not None:
                on_evict(value)

        size = measure_bytes(value)
        if size > self.slow.budget_bytes:  # it would push out everything and still not fit
            gone(value)
            return
        self.slow.get(
            host,
            lambda: move(value, "cpu"),
            size_hint=size,
            on_evict=gone,
            cost_s=self._disk_s.get(host),  # dropped from RAM, it comes from disk again
        )

    def _load_offloaded(self, loader: Callable[[], T]) -> T:
        value = loader()
        if isinstance(value, LoadedPipeline):
            value.pipe.enable_model_cpu_offload(device=self.device)
        return value

    @staticmethod
    def _host(key: CacheKey) -> CacheKey:
        return dataclasses.replace(key, device="cpu")

    def unload(self, key: CacheKey) -> bool:
        """Drop a model from both tiers (and its offloaded form); False if it was in none."""
        host = self._host(key)
        found = self.fast.unload(key)  # demotes it to RAM ...
        found = self.slow.unload(host) or found  # ... and drops it there
        return self.slow.unload(dataclasses.replace(host, variant=OFFLOAD)) or found

    def clear(self) -> int:
        """Free VRAM: every model no job holds moves to RAM. Returns how many moved."""
        return self.fast.clear()

    @contextmanager
    def evicting_first(self, keys: set[CacheKey]) -> Iterator[None]:
        """Within the block, room is made in either tier by evicting these models first."""
        with (
            self.fast.evicting_first(keys),
            self.slow.evicting_first({self._host(k) for k in keys}),
        ):
            yield

    @property
    def version(self) -> int:
        """Changes whenever an entry comes or goes in either tier."""
        return self.fast.version + self.slow.version

    def stats(self) -> dict[str, Any]:
        """The VRAM tier's stats, RAM's under "ram", and the entries of both."""
        fast, slow = self.fast.stats(), self.slow.stats()
        entries = fast["entries"] + slow.pop("entries")
        return {**fast, "entries": entries, "ram": slow}

    def __contains__(self, key: object) -> bool:
        """Whether the model is loaded in either tier, in any form (no disk read needed)."""
        if not isinstance(key, CacheKey):
            return False
        host = self._host(key)
        offloaded = dataclasses.replace(host, variant=OFFLOAD)
        return key in self.fast or host in self.slow or offloaded in self.slow

    def __len__(self) -> int:
        return len(self.fast) + len(self.slow)
