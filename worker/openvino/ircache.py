"""The IR cache: converted IR on disk under a folder named by the source files' identity and
the converter's versions, written atomically; OpenVINO's compile cache and precision options."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from worker.memory import release_memory
from worker.openvino.convert import CONVERTER_VERSION
from worker.openvino.variants import _core

# -- the IR cache ------------------------------------------------------------------------------


def _versions() -> str:
    import diffusers
    import transformers

    versions = (ov.__version__, torch.__version__, diffusers.__version__)
    return f"{CONVERTER_VERSION}|{'|'.join(versions)}|{transformers.__version__}"


def model_identity(path: Path) -> str:
    """A hash of the source files (relative paths, sizes, mtimes) and the converter's versions."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256(_versions().encode())
    for f in files:
        stat = f.stat()
        rel = f.relative_to(path).as_posix() if path.is_dir() else f.name
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "model"


def _cached_ir(ir_cache: Path, identity: str, convert: Any) -> Path:
    """The IR folder for `identity`, converting into it first if it is not there yet.

    Written beside the target and renamed into place: a half-written conversion is never
    used, and of two workers converting the same model at once, the first rename wins.
    """
    target = ir_cache / identity
    if (target / "meta.json").is_file():
        return target
    staging = ir_cache / f".{identity}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    try:
        convert(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        release_memory()  # what the conversion loaded (a whole torch pipeline): give it back
    return target


def compile_config(ir_cache: Path, device: str = "CPU", precision: str = "f32") -> dict[str, str]:
    """Compile options: OpenVINO's compile cache under `ir_cache`, and the precision.

    The precision is always explicit: on CPUs with AMX/AVX512-BF16 OpenVINO would otherwise
    pick bf16 on its own; a worker resolves `openvino_precision` once (`resolve_precision`).
    One cache folder per device and precision: OpenVINO 2026.4 hands out a blob compiled for
    f32 when bf16 is asked for (LOADED_FROM_CACHE), and that blob then computes NaN.
    LATENCY (one stream using every core) is OpenVINO's CPU default, stated so it stays: a
    worker runs one job at a time, and THROUGHPUT's streams split the cores between requests
    it never has (the UNet's CFG halves get their own two streams: `CompiledVariants`).
    CPU threads are not pinned to cores: the same speed on an idle machine, and 1.5x faster
    when other processes share the cores (another worker, a sidecar), where a pinned thread
    waits for its busy core instead of moving (measured: README).
    """
    folder = ir_cache / "compiled" / f"{_slug(device)}-{precision}"
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "CACHE_DIR": str(folder),
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if device == "CPU":
        config["ENABLE_CPU_PINNING"] = "NO"
    return config


# The largest finite bfloat16; a float32 beyond it (float32's own minimum, used as "masked")
# becomes infinite in bf16.
BF16_MAX = float(np.float32(3.3895314e38))
_SMALL_CONSTANT = 1 << 16  # elements: masks and scalars; weights are larger and never this big


def fits_bf16(xml: Path) -> bool:
    """Whether every small float32 constant in this IR is finite in bf16 too (or infinite
    already): bf16 keeps float32's exponent range except its very top, where masks live."""
    for op in _core().read_model(xml).get_ops():
        if op.get_type_name() != "Constant" or op.get_element_type() != ov.Type.f32:
            continue
        if int(np.prod(op.get_output_shape(0), dtype=np.int64)) > _SMALL_CONSTANT:
            continue
        values = np.abs(op.get_data())
        if np.any(np.isfinite(values) & (values > BF16_MAX)):
            return False
    return True
