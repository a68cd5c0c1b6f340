"""Which device a worker runs jobs on, and the model cache sized for it."""

from __future__ import annotations

import platform
from typing import Any

import psutil
import torch

from shared.config import Settings
from shared.vocabulary import Hardware
from worker.cache import ModelCache
from worker.tiers import TieredCache

# Memory a CUDA worker leaves outside its model cache for activations while rendering.
CUDA_WORKING_RESERVE = 2 * 2**30


class DeviceUnavailable(RuntimeError):
    """The worker cannot run on the device it was given; the message says why."""


def pick_device(hardware: Hardware, device: str | None) -> tuple[str, torch.dtype]:
    """The torch device and dtype a worker of this class runs jobs on."""
    if hardware != Hardware.GPU:
        if device not in (None, "cpu"):
            raise DeviceUnavailable(
                f"--device {device} is for gpu (cuda:N) and openvino workers; "
                f"a {hardware} worker runs on the CPU"
            )
        return "cpu", torch.float32
    if not torch.cuda.is_available():
        build = (
            "a CPU-only build"
            if torch.version.cuda is None
            else f"built for CUDA {torch.version.cuda}, but no GPU or driver is visible"
        )
        raise DeviceUnavailable(
            f"a gpu worker needs a CUDA device, and torch sees none (torch {torch.__version__}, "
            f"{build})"
        )
    count = torch.cuda.device_count()
    try:
        asked = torch.device(device or "cuda:0")
    except RuntimeError:  # not a device name at all
        asked = torch.device("cpu")
    index = asked.index or 0
    if asked.type != "cuda" or index >= count:
        raise DeviceUnavailable(
            f"no CUDA device {device!r} here: there are cuda:0 to cuda:{count - 1}"
        )
    device = f"cuda:{index}"
    torch.cuda.set_device(device)  # CUDA is initialised here, in the process that runs jobs
    return device, torch.float16


def vram_budget(settings: Settings, device: str) -> int:
    if settings.cache_vram_mb:
        return settings.cache_vram_mb * 2**20
    total = torch.cuda.get_device_properties(device).total_memory
    return max(total - CUDA_WORKING_RESERVE, total // 2)


def make_cache(settings: Settings, device: str) -> ModelCache | TieredCache:
    """One RAM cache on the CPU; on a GPU, VRAM backed by RAM as the second tier."""
    policy = settings.cache_policy  # each tier gets its own policy object
    ram = ModelCache(settings.cache_ram_mb * 2**20, name="ram", policy=policy)
    if not device.startswith("cuda"):
        return ram
    vram = ModelCache(vram_budget(settings, device), name=device, policy=policy)
    return TieredCache(vram, ram, device, settings.cpu_offload)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def torch_device_info(device: str) -> dict[str, Any]:
    """Name and memory of the device jobs run on (the GPU's own memory on CUDA)."""
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(torch.device(device))
        return {
            "device": device,
            "device_name": torch.cuda.get_device_name(device),
            "memory_total": total,
            "memory_used": total - free,
        }
    vm = psutil.virtual_memory()
    return {
        "device": device,
        "device_name": _cpu_name(),
        "memory_total": vm.total,
        "memory_used": vm.total - vm.available,
    }
