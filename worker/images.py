"""Image plumbing for jobs: decode inputs, fit them to the job's size, masks, arrays."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter, ImageOps


def open_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def open_mask(data: bytes, blur: int) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        mask = im.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """SD-WebUI's resize modes: stretch, cover and crop, or fit and fill with edge pixels."""
    if image.size == (width, height):
        return image
    if mode == "just_resize":
        return image.resize((width, height), Image.Resampling.LANCZOS)
    if mode == "crop_and_resize":
        return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
    # resize_and_fill: fit inside, then extend the edges outward to fill the rest.
    inner = ImageOps.contain(image, (width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(inner)
    top, left = (height - inner.height) // 2, (width - inner.width) // 2
    pad = ((top, height - inner.height - top), (left, width - inner.width - left), (0, 0))
    return Image.fromarray(np.pad(pixels, pad, mode="edge"))


def to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8))
