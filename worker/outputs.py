"""Checking rendered images and writing them to storage: PNGs with parameters, then a manifest."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from shared.jobspec import JobSpec
from shared.storage import Storage


class OutputError(RuntimeError):
    """The pipeline produced something that must not be reported as a result."""


def validate(images: np.ndarray, spec: JobSpec) -> None:
    expected = (spec.batch_size, spec.height, spec.width, 3)
    if images.shape != expected:
        raise OutputError(f"output has shape {images.shape}, expected {expected}")
    if not np.isfinite(images).all():
        raise OutputError("output contains non-finite pixel values (NaN or inf)")


def parameters_text(spec: JobSpec, seed: int) -> str:
    """Generation parameters in SD-WebUI's 'parameters' format, so its tools read them."""
    lines = [spec.prompt]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    lines.append(
        f"Steps: {spec.steps}, Sampler: {spec.sampler}, CFG scale: {spec.cfg_scale:g}, "
        f"Seed: {seed}, Size: {spec.width}x{spec.height}, Model: {spec.model}"
    )
    return "\n".join(lines)


def encode_png(image: np.ndarray, parameters: str) -> bytes:
    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    info = PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def image_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/image-{index}.png"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/manifest.json"


def store(
    storage: Storage, job_id: str, spec: JobSpec, images: np.ndarray, extra: dict[str, Any]
) -> list[str]:
    """Upload every image, then the manifest naming them; returns the image keys."""
    keys = []
    for index, (image, seed) in enumerate(zip(images, spec.image_seeds(), strict=True)):
        key = image_key(job_id, index)
        storage.put(key, encode_png(image, parameters_text(spec, seed)), "image/png")
        keys.append(key)
    manifest = {
        "id": job_id,
        "spec": spec.model_dump(),
        "seeds": spec.image_seeds(),
        "outputs": keys,
        **extra,
    }
    storage.put(manifest_key(job_id), json.dumps(manifest, indent=2).encode(), "application/json")
    return keys
