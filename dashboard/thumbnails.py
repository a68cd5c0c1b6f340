"""Thumbnails of job outputs: made with Pillow on first request, kept in storage under
`thumbs/<job>/<index>-<size>.webp`, so the gallery never downloads full PNGs."""

from __future__ import annotations

import io

from PIL import Image

from scheduler.records import JobRecords
from shared.storage import Storage, thumbs_folder

SIZES = (128, 256)  # the longest side, in pixels
DEFAULT_SIZE = 256
MIMETYPE = "image/webp"


def thumbnail_key(job_id: str, index: int, size: int) -> str:
    return f"{thumbs_folder(job_id)}{index}-{size}.webp"


def thumbnail(
    storage: Storage, records: JobRecords, output_key: str, job_id: str, index: int, size: int
) -> bytes:
    """The stored thumbnail of one output, made (and stored) first if need be. An output never
    changes once its job succeeded, so neither does its thumbnail."""
    key = thumbnail_key(job_id, index, size)
    if storage.exists(key):
        return storage.get(key)
    with Image.open(io.BytesIO(storage.get(output_key))) as im:
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.convert("RGBA" if "A" in im.getbands() else "RGB").save(buf, "WEBP", quality=80)
    data = buf.getvalue()
    storage.put(key, data, MIMETYPE)
    # Deleted since its record was read, its folders emptied before this put: the thumbnail
    # would stay in storage for ever, so it goes now (deleted after this check, the trash
    # empties its folder as usual).
    if not records.exists(job_id):
        storage.delete(key)
    return data
