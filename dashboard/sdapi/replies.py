"""Finished jobs → SD-WebUI's answers: raw base64 PNGs (each with its infotext in the
`parameters` chunk, written by the worker), `parameters`, and `info` as a JSON string."""

from __future__ import annotations

import base64
import io
import json
import re
import time
from typing import Any

from PIL import Image, ImageOps

from dashboard import farm
from dashboard.sdapi import catalogue
from shared.config import Settings
from shared.jobspec import hires_size, hires_upscaler_name

VERSION = "renderfarm-sdapi 1.10.0"
# Fields never echoed back (SillyTavern forwards its connection settings in the body).
SECRET_FIELDS = ("auth", "url", "api_auth", "password", "token")
_SETTING = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def png_text(png: bytes) -> dict[str, str]:
    with Image.open(io.BytesIO(png)) as im:
        return {k: v for k, v in im.info.items() if isinstance(v, str)}


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def parameters(body: dict[str, Any], images_included: bool) -> dict[str, Any]:
    """The request as understood: the body without secrets; input images nulled unless the
    client asked for them back (SD-WebUI's include_init_images)."""
    out = {k: v for k, v in body.items() if k not in SECRET_FIELDS}
    if not images_included:
        for field in ("init_images", "mask"):
            if field in out:
                out[field] = None
    return out


def info(record: dict[str, Any], infotexts: list[str], settings: Settings) -> str:
    """SD-WebUI's `Processed.js()`, as a JSON string."""
    spec, seeds = record["spec"], record["seeds"]
    n = len(seeds)
    model = farm.models().find(spec["model"], "checkpoint")
    hires = spec.get("hires")
    denoising = spec.get("denoising_strength", hires["denoising_strength"] if hires else None)
    extra: dict[str, Any] = {}
    if hires:
        size = hires_size(spec["width"], spec["height"], hires["scale"])
        extra = {
            "Hires upscale": hires["scale"],
            "Hires upscaler": hires_upscaler_name(hires["upscaler"]),
            "Hires resize": f"{size[0]}x{size[1]}",
        }
    created = time.localtime(float(record["created_at"]))
    return json.dumps(
        {
            "prompt": spec["prompt"],
            "all_prompts": [spec["prompt"]] * n,
            "negative_prompt": spec["negative_prompt"],
            "all_negative_prompts": [spec["negative_prompt"]] * n,
            "seed": seeds[0] if seeds else spec.get("seed"),
            "all_seeds": seeds,
            # No variation seeds here (subseed_strength is always 0): the subseed is the seed.
            "subseed": seeds[0] if seeds else -1,
            "all_subseeds": seeds,
            "subseed_strength": 0,
            "width": spec["width"],
            "height": spec["height"],
            "sampler_name": spec["sampler"],
            "cfg_scale": spec["cfg_scale"],
            "steps": spec["steps"],
            "batch_size": spec["batch_size"],
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": spec["model"],
            "sd_model_hash": catalogue.model_hash(model)[:10] if model else None,
            "sd_vae_name": spec.get("vae"),
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": denoising,
            "extra_generation_params": extra,
            "index_of_first_image": 0,
            "infotexts": infotexts,
            "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", created),
            "clip_skip": 1,
            "is_using_inpainting_conditioning": bool(spec.get("mask")),
            "version": VERSION,
            "job_id": record["id"],
        }
    )


def _value(text: str) -> Any:
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        return json.loads(text)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_infotext(text: str) -> dict[str, Any]:
    """SD-WebUI's `parse_generation_parameters`: prompt, negative prompt, then the settings."""
    lines = text.strip().split("\n")
    settings_line = lines.pop() if lines and _SETTING.match(lines[-1]) and ":" in lines[-1] else ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _SETTING.findall(settings_line):
        key = key.strip()
        out[key] = _value(value)
        if key == "Size" and re.fullmatch(r"\d+x\d+", str(value).strip()):
            w, h = str(value).strip().split("x")
            out["Size-1"], out["Size-2"] = int(w), int(h)
    return out


def resize(raw: bytes, resizer: str, scale: float | None, size: tuple[int, int] | None) -> bytes:
    """SD-WebUI's plain extras resizers: "None" leaves the image as it is (upright: a photo's
    EXIF orientation applied, as for an upscaler's input)."""
    with Image.open(io.BytesIO(raw)) as im:
        im = ImageOps.exif_transpose(im)
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        if resizer != "None":
            target = size or (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            method = Image.Resampling.LANCZOS if resizer == "Lanczos" else Image.Resampling.NEAREST
            im = im.resize(target, method)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()
