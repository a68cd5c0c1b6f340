"""Compiled variants: one IR compiled once per exact input shapes, each shape an entry of the
worker's model cache; OpenVINO's core and device names; the backend's two errors."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import psutil

from worker.cache import CacheKey, EntryLocked, ModelCache

log = logging.getLogger(__name__)


class OpenVINOOutputError(RuntimeError):
    """A compiled model gave an output of the wrong shape, or NaN/inf values."""


class UnsupportedOnOpenVINO(RuntimeError):
    """A model or a call that this backend does not run."""


# -- compiled variants -------------------------------------------------------------------------


@cache
def _core() -> ov.Core:
    return ov.Core()


def device_name(device: str) -> str:
    """OpenVINO's full name for `device`; ValueError naming the devices it has if none."""
    core = _core()
    try:
        return str(core.get_property(device, "FULL_DEVICE_NAME"))
    except RuntimeError:  # an unknown name, or a plugin whose driver is missing
        raise ValueError(
            f"OpenVINO has no usable device {device!r} here "
            f"(it sees: {', '.join(core.available_devices)})"
        ) from None


def resolve_precision(setting: str, device: str) -> str:
    """The precision `device` computes in for the `openvino_precision` setting.

    "auto": bf16 where OpenVINO reports BF16 among the device's OPTIMIZATION_CAPABILITIES
    (CPUs with AMX or AVX512-BF16), f32 elsewhere. "bf16" on a device without it is refused:
    OpenVINO would emulate it slowly or run f32 while the worker reported bf16.
    """
    if setting not in ("auto", "f32", "bf16"):
        raise ValueError(f"openvino_precision must be auto, f32 or bf16, not {setting!r}")
    if setting == "f32":
        return "f32"
    capabilities = [str(c) for c in _core().get_property(device, "OPTIMIZATION_CAPABILITIES")]
    if "BF16" in capabilities:
        return "bf16"
    if setting == "bf16":
        raise ValueError(
            f"RENDERFARM_OPENVINO_PRECISION=bf16, but OpenVINO's {device} has no bf16 "
            f"(its capabilities: {', '.join(capabilities)}); use auto or f32"
        )
    return "f32"


def _rss() -> int:
    return psutil.Process().memory_info().rss


@dataclass
class _Variant:
    """One compiled shape: a cache entry like any loaded model (`memory.NativeMemory`)."""

    # One request; or, for a split batch, one per part, each part running on its own stream.
    requests: list[ov.InferRequest]
    weight_bytes: int
    rss_before: int  # the process's resident memory just before this variant compiled
    # Resident memory the process grew by while this variant compiled and first ran: its
    # copy of the weights (reordered for the device) and its activation buffers, which grow
    # with the shape and dominate at large sizes. Measured, not assumed; at least the weights.
    nbytes: int = 0
    ran: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # one call per request

    def native_bytes(self) -> int:
        return max(self.nbytes, self.weight_bytes)


class CompiledVariants:
    """One IR, compiled once per exact input shapes.

    Each compiled shape is an entry in the worker's model cache, keyed by the IR file, the
    device, the precision and the shapes: it counts against the cache's budget, is evicted
    least recently used first like any model, and is locked while it runs. They leave the
    cache with the model they belong to (`drop_variants`).
    """

    def __init__(
        self,
        xml: Path,
        device: str,
        config: dict[str, str],
        cache: ModelCache,
        *,
        split_batch: bool = False,
    ) -> None:
        self.name = xml.stem
        self.xml = xml
        self.device = device
        self.config = config
        self.cache = cache
        # For a model whose batch items are independent (a UNet's CFG pair): an even batch
        # runs as two halves at once, one OpenVINO stream each (`_split`).
        self.split_batch = split_batch
        # The weights file is memory-mapped, not read: a variant's compile copies what it needs.
        self.model = _core().read_model(xml)
        self.weight_bytes = xml.with_suffix(".bin").stat().st_size

    def _key(self, shapes: tuple[tuple[int, ...], ...]) -> CacheKey:
        variant = ",".join("x".join(map(str, shape)) for shape in shapes)
        precision = self.config.get("INFERENCE_PRECISION_HINT", "")
        return CacheKey.of(self.xml, precision, f"openvino:{self.device}", variant)

    def _entries(self) -> list[dict[str, Any]]:
        """This IR's compiled variants in the cache, least recently used first."""
        path, device = str(self.xml.resolve()), f"openvino:{self.device}"
        return [
            e for e in self.cache.stats()["entries"] if e["path"] == path and e["device"] == device
        ]

    @property
    def count(self) -> int:
        return len(self._entries())

    @property
    def nbytes(self) -> int:
        return sum(e["size_bytes"] for e in self._entries())

    def shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        return [
            tuple(tuple(int(d) for d in shape.split("x")) for shape in e["variant"].split(","))
            for e in self._entries()
        ]

    def drop(self) -> None:
        """Unload every compiled variant of this IR that no call is running."""
        for shapes in self.shapes():
            try:
                self.cache.unload(self._key(shapes))
            except EntryLocked:
                log.warning("OpenVINO %s %s is running; left in the cache", self.name, shapes)

    def __call__(
        self, inputs: Sequence[np.ndarray], expected: Sequence[tuple[int, ...] | None]
    ) -> list[np.ndarray]:
        """Run at exactly these input shapes; outputs checked against `expected` shapes."""
        shapes = tuple(tuple(int(d) for d in x.shape) for x in inputs)
        key = self._key(shapes)
        with (
            self.cache.use(key, lambda: self._compile(shapes), size_hint=self.weight_bytes) as var,
            var.lock,
        ):
            ports = var.requests[0].model_inputs
            feed = [
                np.ascontiguousarray(x, dtype=port.get_element_type().to_dtype())
                for x, port in zip(inputs, ports, strict=True)
            ]
            outputs = _infer(var.requests, feed)
            if not var.ran:  # the first run allocated the activation buffers: count them
                var.ran = True
                var.nbytes = max(0, _rss() - var.rss_before)
                self.cache.remeasure(key)
        for i, (out, want) in enumerate(zip(outputs, expected, strict=True)):
            if want is not None and tuple(out.shape) != tuple(want):
                raise OpenVINOOutputError(
                    f"OpenVINO {self.name} output {i} has shape {tuple(out.shape)}; "
                    f"expected {tuple(want)} for inputs {list(shapes)}"
                )
        for out in outputs:
            if out.dtype.kind == "f" and not np.isfinite(out).all():
                raise OpenVINOOutputError(f"OpenVINO {self.name} gave NaN or infinite values")
        return outputs

    def _split(self, shapes: tuple[tuple[int, ...], ...]) -> int:
        """How many parts to run these shapes' batch in: 2 for an even batch that every input
        shares, on a CPU with at least 2 cores; else 1.

        A worker runs one job at a time, so one stream with every core (LATENCY) is the
        default; but a UNet call under CFG is two independent halves, and two streams of
        half the cores each finish them sooner (measured: README), the cores synchronising
        less per layer. f32 results are bit-identical either way.
        """
        batch = {shape[0] if shape else None for shape in shapes}
        if not self.split_batch or self.device != "CPU" or len(batch) != 1:
            return 1
        (n,) = batch
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return 2 if n is not None and n >= 2 and n % 2 == 0 and cores >= 2 else 1

    def _compile(self, shapes: tuple[tuple[int, ...], ...]) -> _Variant:
        """Compile for exactly these input shapes (static: no other shape can run on it)."""
        if len(shapes) != len(self.model.inputs):
            raise UnsupportedOnOpenVINO(
                f"OpenVINO {self.name} takes {len(self.model.inputs)} inputs, got {len(shapes)}"
            )
        before = _rss()
        started = time.perf_counter()
        parts = self._split(shapes)
        each = tuple((shape[0] // parts, *shape[1:]) for shape in shapes) if parts > 1 else shapes
        model = self.model.clone()  # reshape changes the model: keep the dynamic one intact
        ports = zip(model.inputs, each, strict=True)
        model.reshape({port: ov.PartialShape(list(shape)) for port, shape in ports})
        config = self.config if parts == 1 else {**self.config, "NUM_STREAMS": str(parts)}
        compiled = _core().compile_model(model, self.device, config)
        got = tuple(tuple(port.get_shape()) for port in compiled.inputs)
        if got != each:  # a model that ignored the reshape would run at another size
            raise OpenVINOOutputError(f"OpenVINO {self.name} compiled for {got}, asked for {each}")
        log.info(
            "compiled OpenVINO %s for %s in %.2fs",
            self.name,
            list(shapes),
            time.perf_counter() - started,
        )
        requests = [compiled.create_infer_request() for _ in range(parts)]
        return _Variant(requests, self.weight_bytes, before)


def _infer(requests: list[ov.InferRequest], feed: list[np.ndarray]) -> list[np.ndarray]:
    """One call on one request, or the batch split across the requests, run at once.

    Inputs are read in place (`feed` outlives the call); outputs are copied out of the
    requests' buffers, which the next call overwrites.
    """
    if len(requests) == 1:
        result = requests[0].infer(feed, share_inputs=True)
        return [result[port] for port in requests[0].model_outputs]
    size = feed[0].shape[0] // len(requests)
    for i, request in enumerate(requests):
        request.start_async([x[i * size : (i + 1) * size] for x in feed], share_inputs=True)
    for request in requests:
        request.wait()
    count = len(requests[0].model_outputs)
    return [np.concatenate([r.get_output_tensor(i).data for r in requests]) for i in range(count)]
