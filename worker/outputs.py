"""Checking rendered images and writing them to storage: PNGs with parameters, then a manifest."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from shared.jobspec import (
    AnySpec,
    DiffusionSpec,
    Img2ImgSpec,
    Txt2ImgSpec,
    UpscaleSpec,
    hires_upscaler_name,
)
from shared.samplers import DEFAULT_SCHEDULER
from shared.storage import Storage, job_folder

log = logging.getLogger(__name__)


class OutputError(RuntimeError):
    """The pipeline produced something that must not be reported as a result."""


def validate(images: np.ndarray, count: int, size: tuple[int, int]) -> None:
    """Exactly `count` RGB images of `size` (width, height), every pixel finite."""
    width, height = size
    expected = (count, height, width, 3)
    if images.shape != expected:
        raise OutputError(f"output has shape {images.shape}, expected {expected}")
    if not np.isfinite(images).all():
        raise OutputError("output contains non-finite pixel values (NaN or inf)")


def _diffusion_parameters(spec: DiffusionSpec, seed: int, size: tuple[int, int]) -> list[str]:
    params = [
        f"Steps: {spec.steps}",
        f"Sampler: {spec.sampler}",
        # SD-WebUI reads a sampler named alone as its default schedule (Karras, for some).
        *(["Schedule type: Uniform"] if spec.sampler in DEFAULT_SCHEDULER else []),
        f"CFG scale: {spec.cfg_scale:g}",
        f"Seed: {seed}",
        f"Size: {spec.width}x{spec.height}",
        f"Model: {spec.model}",
    ]
    if spec.vae:
        params.append(f"VAE: {spec.vae}")
    if isinstance(spec, Img2ImgSpec):
        params.append(f"Denoising strength: {spec.denoising_strength:g}")
        if spec.mask:
            params.append(f"Mask blur: {spec.mask_blur}")
    if isinstance(spec, Txt2ImgSpec) and spec.hires:
        params += [
            f"Denoising strength: {spec.hires.denoising_strength:g}",
            f"Hires upscale: {spec.hires.scale:g}",
            f"Hires steps: {spec.hires.steps or spec.steps}",
            f"Hires upscaler: {hires_upscaler_name(spec.hires.upscaler)}",
            f"Hires resize: {size[0]}x{size[1]}",
        ]
    for i, unit in enumerate(spec.controlnet):
        params.append(
            f'ControlNet {i}: "Model: {unit.model}, Weight: {unit.conditioning_scale:g}, '
            f'Guidance Start: {unit.guidance_start:g}, Guidance End: {unit.guidance_end:g}"'
        )
    return params


def parameters_text(spec: AnySpec, index: int, size: tuple[int, int]) -> str:
    """Generation parameters in SD-WebUI's 'parameters' format, so its tools read them."""
    if isinstance(spec, UpscaleSpec):
        return f"Upscaler: {spec.upscaler}, Size: {size[0]}x{size[1]}"
    lines = [spec.prompt]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    lines.append(", ".join(_diffusion_parameters(spec, spec.image_seeds()[index], size)))
    return "\n".join(lines)


def encode_png(image: np.ndarray, parameters: str) -> bytes:
    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    info = PngInfo()
    info.add_text("parameters", parameters)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def image_key(job_id: str, attempt: int, index: int) -> str:
    # Per attempt: a stale attempt can never overwrite the outputs of the current one.
    return f"{job_folder(job_id)}{attempt}/image-{index}.png"


def manifest_key(job_id: str, attempt: int) -> str:
    return f"{job_folder(job_id)}{attempt}/manifest.json"


def put_retrying(
    storage: Storage,
    key: str,
    data: bytes,
    content_type: str,
    retry_s: float,
    still_ours: Callable[[], bool],
    on_retry: Callable[[str], None] = lambda note: None,
) -> None:
    """Put, retrying storage errors with backoff for up to `retry_s`, then check it is there.

    An S3 outage delays the job instead of failing it; the worker keeps the job's lease
    meanwhile (its heartbeat renews it), and stops if the lease is lost. Each retry is told
    to `on_retry` as a note for the job's record.
    """
    deadline = time.monotonic() + retry_s
    delay = 0.5
    while True:
        try:
            storage.put(key, data, content_type)
            if storage.exists(key):
                return
            error: Exception = OutputError(f"{key} missing right after upload")
        except Exception as exc:  # botocore and OS errors alike
            error = exc
        if time.monotonic() + delay > deadline:
            raise OutputError(f"could not store {key} within {retry_s:.0f}s: {error}")
        if not still_ours():
            raise OutputError(f"lease lost while storing {key}")
        log.warning("storing %s failed (%s); retrying in %.1fs", key, error, delay)
        note = "storing outputs: storage unreachable, retrying"
        on_retry(f"{note} (at most {retry_s:.0f}s): {error}")
        time.sleep(delay)
        delay = min(delay * 2, 15.0)


def store(
    storage: Storage,
    job_id: str,
    attempt: int,
    spec: AnySpec,
    images: np.ndarray,
    extra: dict[str, Any],
    retry_s: float = 600.0,
    still_ours: Callable[[], bool] = lambda: True,
    on_retry: Callable[[str], None] = lambda note: None,
) -> list[str]:
    """Upload every image, then the manifest naming them; returns the image keys.

    Each object is checked to exist after its upload, so a job is only ever marked
    succeeded with all its objects in storage.
    """
    keys = []
    size = (images.shape[2], images.shape[1])
    for index, image in enumerate(images):
        key = image_key(job_id, attempt, index)
        png = encode_png(image, parameters_text(spec, index, size))
        put_retrying(storage, key, png, "image/png", retry_s, still_ours, on_retry)
        keys.append(key)
    manifest = {
        "id": job_id,
        "spec": spec.model_dump(),
        "seeds": spec.image_seeds(),
        "outputs": keys,
        **extra,
    }
    body = json.dumps(manifest, indent=2).encode()
    put_retrying(
        storage,
        manifest_key(job_id, attempt),
        body,
        "application/json",
        retry_s,
        still_ours,
        on_retry,
    )
    return keys
