"""How a worker class loads models: torch as they are, or converted to OpenVINO.

A worker picks its backend once at start; the runner and the cache do not know which.
Both put the models into the same diffusers pipelines and upscaler tiling code.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from shared.config import Settings
from shared.modelstore import ModelInfo
from shared.vocabulary import Hardware
from worker import pipelines
from worker.cache import ModelCache, OnEvict
from worker.device import DeviceUnavailable, torch_device_info
from worker.tiers import TieredCache
from worker.upscalers import load_upscaler


class Backend(Protocol):
    # Part of the cache key of checkpoints and upscalers ("" for torch models).
    variant: str
    # Called when the cache drops a model (OpenVINO: its compiled variants go with it).
    on_evict: OnEvict | None

    def load_checkpoint(self, model: ModelInfo, device: str, dtype: torch.dtype) -> Any: ...

    def load_upscaler(self, model: ModelInfo, device: str, dtype: torch.dtype) -> Any: ...

    def device_info(self) -> dict[str, Any]:
        """Name and memory of the device jobs run on, for the heartbeat."""
        ...


class TorchBackend:
    variant = ""
    on_evict = None

    def __init__(self, device: str, precision: str = "f32") -> None:
        self.device = device
        # What diffusion jobs compute in: f16 on CUDA (the weights' dtype), f32 or bf16
        # (autocast) on the CPU. Upscalers run in their weights' dtype either way.
        self.precision = precision
        self.autocast = torch.bfloat16 if precision == "bf16" else None

    def load_checkpoint(self, model: ModelInfo, device: str, dtype: torch.dtype) -> Any:
        return pipelines.load_pipeline(model, device, dtype, autocast=self.autocast)

    def load_upscaler(self, model: ModelInfo, device: str, dtype: torch.dtype) -> Any:
        return load_upscaler(model, device, dtype)

    def device_info(self) -> dict[str, Any]:
        return {**torch_device_info(self.device), "precision": self.precision}


class OpenVINOBackend:
    """Checkpoints and upscalers converted to OpenVINO IR (cached on disk) and compiled per
    shape; compiled variants are entries of the worker's cache and leave it with their model."""

    def __init__(self, settings: Settings, cache: ModelCache | TieredCache) -> None:
        from worker import openvino as ovb  # keeps openvino off other workers

        self._ov = ovb
        self.ir_cache, self.ov_device = settings.openvino_cache_dir, settings.openvino_device
        try:
            self.device_name = ovb.device_name(self.ov_device)
            # Resolved once: every model this worker loads computes in it (`fits_bf16` aside).
            self.precision = ovb.resolve_precision(settings.openvino_precision, self.ov_device)
        except ValueError as exc:
            raise DeviceUnavailable(str(exc)) from None
        self.cache = cache
        self.variant = f"openvino:{self.ov_device}"
        self.on_evict = ovb.drop_variants

    def load_checkpoint(self, model: ModelInfo, device: str, dtype: torch.dtype) -> Any:
        return self._ov.load_openvino_pipeline(
            model, self.ir_cache, self.ov_device, precision=self.precision, cache=self.cache
        )

    def load_upscaler(self, model: ModelInfo, device: str, dtype: torch.dtype) -> Any:
        return self._ov.openvino_upscaler(
            load_upscaler(model, device, dtype),
            self.ir_cache,
            self.ov_device,
            precision=self.precision,
            cache=self.cache,
        )

    def device_info(self) -> dict[str, Any]:
        # Host memory: OpenVINO's CPU device shares it, and an Intel GPU's is not reported.
        return {
            **torch_device_info("cpu"),
            "device": self.variant,
            "device_name": self.device_name,
            "precision": self.precision,
        }


def make_backend(
    hardware: Hardware, settings: Settings, device: str, cache: ModelCache | TieredCache
) -> Backend:
    if hardware == Hardware.OPENVINO:
        return OpenVINOBackend(settings, cache)
    if device.startswith("cuda"):
        return TorchBackend(device, "f16")  # pick_device: float16 weights on CUDA
    return TorchBackend(device, settings.torch_cpu_precision)
