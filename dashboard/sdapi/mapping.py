"""SD-WebUI request bodies → the farm's job specs (shared/jobspec.py validates them after).

Every field SD-WebUI documents is read here or deliberately ignored: unknown fields and
`null`s are ignored (clients send both), integral floats are accepted where integers are
expected (bots send `10.0` steps), and a field whose value we cannot honour — one that
would change the picture — is a 422 naming it, never silently dropped.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math
import re
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

from dashboard.sdapi import catalogue
from dashboard.sdapi.errors import invalid
from shared.config import Settings
from shared.jobspec import decode_image, hires_size
from shared.vocabulary import JobKind

# Our spec's fields → the request fields they come from, for error messages.
RENAME = {
    "batch_count": "n_iter",
    "sampler": "sampler_name",
    "model": "sd_model_checkpoint",
    "vae": "sd_vae",
    "init_image": "init_images.0",
    "hires.scale": "hr_scale",
    "hires.upscaler": "hr_upscaler",
    "hires.steps": "hr_second_pass_steps",
    "hires.denoising_strength": "denoising_strength",
    "hires": "hr_scale",
    "controlnet": "alwayson_scripts.ControlNet.args",
}
EXTRAS_RENAME = {
    "upscaler": "upscaler_1",
    "scale": "upscaling_resize",
    "width": "upscaling_resize_w",
    "height": "upscaling_resize_h",
}
RESIZE_MODES = {0: "just_resize", 1: "crop_and_resize", 2: "resize_and_fill"}
# An integer as a string: ASCII digits only (str.isdigit() takes "²"), short enough for int().
INTEGER = re.compile(r"[+-]?[0-9]{1,30}", re.ASCII)
# No field the farm reads needs more; bigger numbers are refused before any arithmetic.
LARGEST_INT = 2**63 - 1
SAME = ("", "use same checkpoint", "use same sampler", "use same scheduler")
NO_MODULE = ("", "none")


class Fields:
    """Typed reads of a request body: null = absent; SD-WebUI's coercions."""

    def __init__(self, body: dict[str, Any], prefix: str = "") -> None:
        self.body = body
        self.prefix = prefix

    def raw(self, name: str) -> Any:
        return self.body.get(name)

    def int(self, name: str, default: int) -> int:
        v = self.body.get(name)
        if v is None:
            return default
        # A float is truncated, as SD-WebUI's pydantic v1 does (AIYA sends steps / 2).
        finite = isinstance(v, float) and math.isfinite(v)
        if finite or (isinstance(v, str) and INTEGER.fullmatch(v.strip())):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise invalid(self.prefix + name, "value is not a valid integer", "type_error.integer")
        if not -LARGEST_INT <= v <= LARGEST_INT:
            raise invalid(self.prefix + name, "integer out of range", "value_error.number")
        return v

    def float(self, name: str, default: float) -> float:
        v = self.body.get(name)
        if v is None:
            return default
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = float(v)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise invalid(self.prefix + name, "value is not a valid number", "type_error.float")
        if isinstance(v, int) and not -LARGEST_INT <= v <= LARGEST_INT:
            raise invalid(self.prefix + name, "number out of range", "value_error.number")
        if not math.isfinite(v):
            raise invalid(self.prefix + name, "must be a finite number", "value_error.number")
        return float(v)

    def str(self, name: str, default: str) -> str:
        v = self.body.get(name)
        if v is None:
            return default
        if not isinstance(v, str):
            raise invalid(self.prefix + name, "str type expected", "type_error.str")
        return v

    def bool(self, name: str, default: bool) -> bool:
        v = self.body.get(name)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        if v in (0, 1):
            return bool(v)
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        raise invalid(
            self.prefix + name, "value could not be parsed to a boolean", "type_error.bool"
        )

    def dict(self, name: str) -> dict[str, Any]:
        v = self.body.get(name)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise invalid(self.prefix + name, "value is not a valid dict", "type_error.dict")
        return v

    def list(self, name: str) -> list[Any]:
        v = self.body.get(name)
        if v is None:
            return []
        if not isinstance(v, list):
            raise invalid(self.prefix + name, "value is not a valid list", "type_error.list")
        return v


def image_value(value: Any, field: str) -> str:
    """An image as our specs take it (base64, a data: URL is fine)."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "must be a base64-encoded image", "type_error.str")
    return value.strip()


def _unhonourable(f: Fields, hires: bool) -> None:
    """Fields that would change the picture in ways the farm cannot render."""
    # The farm has no prompt styles, and SD-WebUI ignores a style name it does not know
    # (AIYA sends its default, "None"): only the field's type is checked.
    f.list("styles")
    checks: list[tuple[str, bool, str]] = [
        ("restore_faces", f.bool("restore_faces", False), "face restoration is not available"),
        ("tiling", f.bool("tiling", False), "tiling is not available"),
        (
            "subseed_strength",
            f.float("subseed_strength", 0.0) > 0,
            "variation seeds are not available",
        ),
        ("seed_resize_from_w", f.int("seed_resize_from_w", -1) > 0, "seed resize is not available"),
        ("seed_resize_from_h", f.int("seed_resize_from_h", -1) > 0, "seed resize is not available"),
        (
            "script_name",
            bool(f.str("script_name", "")),
            f"script {f.raw('script_name')!r} not found",
        ),
        ("refiner_checkpoint", bool(f.str("refiner_checkpoint", "")), "refiners are not available"),
    ]
    if hires:
        prompt, negative = f.str("prompt", ""), f.str("negative_prompt", "")
        checks += [
            (
                "hr_checkpoint_name",
                f.str("hr_checkpoint_name", "").lower() not in SAME,
                "a second-pass checkpoint is not available",
            ),
            (
                "hr_sampler_name",
                f.str("hr_sampler_name", "").lower() not in SAME
                and f.str("hr_sampler_name", "") != f.str("sampler_name", ""),
                "a second-pass sampler is not available",
            ),
            (
                "hr_prompt",
                f.str("hr_prompt", "") not in ("", prompt),
                "a second-pass prompt is not available",
            ),
            (
                "hr_negative_prompt",
                f.str("hr_negative_prompt", "") not in ("", negative),
                "a second-pass negative prompt is not available",
            ),
        ]
    for field, refused, why in checks:
        if refused:
            raise invalid(field, why)


@dataclass(frozen=True)
class Choices:
    """The caller's options that shape a generation (its own, then override_settings)."""

    model: str | None
    vae: str | None
    clip_skip: int


def choices(f: Fields, options: dict[str, Any], settings: Settings) -> Choices:
    override = f.dict("override_settings")
    where = "override_settings." if "sd_model_checkpoint" in override else ""
    title = override.get("sd_model_checkpoint") or options.get("sd_model_checkpoint")
    model = catalogue.find_checkpoint(str(title), settings) if title else None
    if model is None:
        if title:
            raise invalid(where + "sd_model_checkpoint", f"unknown checkpoint {title!r}")
        raise invalid("sd_model_checkpoint", "the farm has no checkpoint")
    vae_value = override.get("sd_vae", options.get("sd_vae"))
    known, vae = catalogue.find_vae(None if vae_value is None else str(vae_value), settings)
    if not known:
        where = "override_settings." if "sd_vae" in override else ""
        raise invalid(where + "sd_vae", f"unknown VAE {vae_value!r}")
    where = "override_settings." if "CLIP_stop_at_last_layers" in override else ""
    clip = override.get("CLIP_stop_at_last_layers", options.get("CLIP_stop_at_last_layers"))
    return Choices(model.name, vae, clip_skip(clip, where + "CLIP_stop_at_last_layers"))


def clip_skip(value: Any, field: str) -> int:
    """CLIP skip (`CLIP_stop_at_last_layers`, null = 1): the farm's pipelines use the text
    encoder's last layer only. The one check for POST /options and for every generation."""
    n = Fields({field: value}).int(field, 1)
    if n != 1:
        raise invalid(field, "CLIP skip is not available (only 1)")
    return n


def sampler(f: Fields) -> str:
    name = f.str("sampler_name", "") or f.str("sampler_index", "") or "Euler"
    scheduler = f.str("scheduler", "") or "automatic"
    found, at_fault = catalogue.sampler_for(name, scheduler)
    if found is None:
        if at_fault == "scheduler":
            known = ", ".join(catalogue.SCHEDULERS)
            raise invalid(
                "scheduler",
                f"scheduler {scheduler!r} is not available with {name!r}; known: {known}",
            )
        field = "sampler_name" if f.raw("sampler_name") else "sampler_index"
        known = ", ".join(catalogue.base_samplers())
        raise invalid(field, f"sampler {name!r} not found; known: {known}")
    return found


def _enabled_units(f: Fields) -> list[tuple[str, dict[str, Any]]]:
    """The enabled ControlNet units, each with its path in the request as the client
    wrote it ("alwayson_scripts.controlnet.args.1."): disabled units are left out."""
    units = []
    for script, value in f.dict("alwayson_scripts").items():
        args = value.get("args", []) if isinstance(value, dict) else value
        if str(script).lower() != "controlnet":
            # Clients send disabled scripts as [False]; an enabled one we cannot run is refused.
            if isinstance(args, list) and any(args):
                raise invalid(f"alwayson_scripts.{script}", f"always on script {script} not found")
            continue
        if not isinstance(args, list):
            raise invalid(f"alwayson_scripts.{script}.args", "value is not a valid list")
        for i, unit in enumerate(args):
            at = f"alwayson_scripts.{script}.args.{i}."
            if not isinstance(unit, dict):
                raise invalid(at.rstrip("."), "a ControlNet unit must be an object")
            if Fields(unit, at).bool("enabled", False):
                units.append((at, unit))
    return units


def renames(body: dict[str, Any]) -> dict[str, str]:
    """RENAME for this request: our `controlnet.N` is the request's Nth enabled unit."""
    paths = [at.rstrip(".") for at, _ in _enabled_units(Fields(body))]
    units = {f"controlnet.{n}": path for n, path in enumerate(paths)}
    if paths:  # the list itself, under the script's key as the client wrote it
        units["controlnet"] = paths[0].rsplit(".", 1)[0]
    return {**units, **RENAME}  # these first: rename_field takes the first match


def controlnet_units(f: Fields, settings: Settings) -> list[dict[str, Any]]:
    units: list[dict[str, Any]] = []
    for at, unit in _enabled_units(f):
        u = Fields(unit, at)
        if u.str("module", "none").lower() not in NO_MODULE:
            raise invalid(
                at + "module",
                "preprocessors are not available: send a ready control image with module 'none'",
            )
        image = unit.get("image") or unit.get("input_image")
        if isinstance(image, dict):
            image = image.get("image")
        if u.raw("mask") or u.raw("mask_image"):
            raise invalid(at + "mask", "ControlNet masks are not available")
        model = u.str("model", "")
        if not model or model.lower() == "none":
            raise invalid(at + "model", "an enabled unit needs a model")
        end = u.float("guidance_end", u.float("guidance", 1.0))
        units.append(
            {
                "model": catalogue.plain_name(model),
                "image": image_value(image, at + "image"),
                "conditioning_scale": u.float("weight", 1.0),
                "guidance_start": u.float("guidance_start", 0.0),
                "guidance_end": end,
            }
        )
    return units


def diffusion(
    f: Fields, options: dict[str, Any], settings: Settings, hires: bool
) -> dict[str, Any]:
    _unhonourable(f, hires)
    picked = choices(f, options, settings)
    seed = f.int("seed", -1)
    return {
        "model": picked.model,
        "vae": picked.vae,
        "prompt": f.str("prompt", ""),
        "negative_prompt": f.str("negative_prompt", ""),
        "steps": f.int("steps", 50),
        "cfg_scale": f.float("cfg_scale", 7.0),
        "seed": None if seed < 0 else seed,
        "width": f.int("width", 512),
        "height": f.int("height", 512),
        "batch_size": f.int("batch_size", 1),
        "batch_count": f.int("n_iter", 1),
        "sampler": sampler(f),
        "controlnet": controlnet_units(f, settings),
    }


def _hires(f: Fields, width: int, height: int, settings: Settings) -> dict[str, Any]:
    name = f.str("hr_upscaler", "Latent")
    if catalogue.named(name, catalogue.LATENT_MODES):
        upscaler = "latent"
    else:
        found = catalogue.find_upscaler(name, settings)
        if found is None:
            known = ", ".join(
                [
                    *catalogue.LATENT_MODES,
                    *(
                        u["name"]
                        for u in catalogue.upscalers(settings)
                        if u["name"] not in catalogue.RESIZERS
                    ),
                ]
            )
            raise invalid(
                "hr_upscaler", f"upscaler {name!r} is not available for hires fix; known: {known}"
            )
        upscaler = found
    scale = f.float("hr_scale", 2.0)
    x, y = f.int("hr_resize_x", 0), f.int("hr_resize_y", 0)
    for field, value in (("hr_resize_x", x), ("hr_resize_y", y)):
        if value < 0:
            raise invalid(field, "must be 0 (use hr_scale) or a size in pixels")
    # A base size below 1 is left to the spec's validator, which names width or height.
    if (x or y) and min(width, height) > 0:
        scale = x / width if x else y / height
        want = (x or round(width * scale), y or round(height * scale))
        if hires_size(width, height, scale) != want:
            raise invalid(
                "hr_resize_x" if x else "hr_resize_y",
                f"{want[0]}x{want[1]} is not {width}x{height} scaled "
                "to a multiple of 8 on both sides",
            )
    steps = f.int("hr_second_pass_steps", 0)
    return {
        "scale": scale,
        "upscaler": upscaler,
        "steps": steps or None,  # 0: as many as the first pass
        "denoising_strength": f.float("denoising_strength", 0.7),
    }


def txt2img(body: dict[str, Any], options: dict[str, Any], settings: Settings) -> dict[str, Any]:
    f = Fields(body)
    hires = f.bool("enable_hr", False)
    spec = {"kind": JobKind.TXT2IMG, **diffusion(f, options, settings, hires)}
    if hires:
        size = (spec["width"], spec["height"])
        spec["hires"] = _hires(f, *size, settings)
        if hires_size(*size, spec["hires"]["scale"]) == size:
            del spec["hires"]  # a second pass at the same size: SD-WebUI skips it too
    return spec


def _inverted(mask: str, field: str, settings: Settings) -> str:
    """The mask, white for black, as a base64 PNG: upright, as the init image will be stored.
    Refused before it is decoded if it has more pixels than any input may have."""
    try:
        raw = decode_image(mask, settings.max_input_pixels)
    except ValueError as exc:
        raise invalid(field, str(exc)) from None
    with Image.open(io.BytesIO(raw)) as im:
        out = ImageOps.invert(ImageOps.exif_transpose(im).convert("L"))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def img2img(body: dict[str, Any], options: dict[str, Any], settings: Settings) -> dict[str, Any]:
    f = Fields(body)
    spec = {"kind": JobKind.IMG2IMG, **diffusion(f, options, settings, hires=False)}
    inits = f.list("init_images")
    if not inits:
        raise invalid("init_images", "field required: one init image", "value_error.missing")
    if len(inits) > 1:
        raise invalid("init_images", "one init image per request")
    spec["init_image"] = image_value(inits[0], "init_images.0")
    mode = f.int("resize_mode", 0)
    if mode not in RESIZE_MODES:
        raise invalid(
            "resize_mode",
            "0 (just resize), 1 (crop and resize) or 2 (resize and fill); "
            "latent upscale (3) is not available",
        )
    spec["resize_mode"] = RESIZE_MODES[mode]
    spec["denoising_strength"] = f.float("denoising_strength", 0.75)
    if f.raw("mask"):
        mask = image_value(f.raw("mask"), "mask")
        if f.int("inpainting_mask_invert", 0) == 1:
            mask = _inverted(mask, "mask", settings)
        spec["mask"] = mask
        spec["mask_blur"] = f.int("mask_blur", 4)
    return spec


@dataclass(frozen=True)
class Extras:
    """An extras request: `spec` for an upscaler model; else a plain resize in the dashboard
    (`resizer` "None", "Lanczos" or "Nearest") to `scale` or `size`."""

    spec: dict[str, Any] | None
    resizer: str | None
    scale: float | None
    size: tuple[int, int] | None


def extras(body: dict[str, Any], image: str, settings: Settings) -> Extras:
    f = Fields(body)
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if f.float(field, 0.0) > 0:
            raise invalid(field, "face restoration is not available")
    if (
        f.str("upscaler_2", "None") not in ("None", "")
        and f.float("extras_upscaler_2_visibility", 0.0) > 0
    ):
        raise invalid("upscaler_2", "a second upscaler is not available")
    mode = f.int("resize_mode", 0)
    if mode not in (0, 1):
        raise invalid(
            "resize_mode", "0 (scale by upscaling_resize) or 1 (to upscaling_resize_w x _h)"
        )
    scale, size = None, None
    if mode == 0:
        scale = f.float("upscaling_resize", 2.0)
        if not 0 < scale <= 16:
            raise invalid("upscaling_resize", "must be above 0 and at most 16")
    else:
        size = (f.int("upscaling_resize_w", 512), f.int("upscaling_resize_h", 512))
        for field, side in zip(("upscaling_resize_w", "upscaling_resize_h"), size, strict=True):
            if side < 1:
                raise invalid(field, "must be at least 1")
    name = f.str("upscaler_1", "None")
    if resizer := catalogue.named(name, catalogue.RESIZERS):
        return Extras(None, resizer, scale, size)
    found = catalogue.find_upscaler(name, settings)
    if found is None:
        known = ", ".join(u["name"] for u in catalogue.upscalers(settings))
        raise invalid("upscaler_1", f"upscaler {name!r} not found; known: {known}")
    spec: dict[str, Any] = {"kind": JobKind.UPSCALE, "image": image, "upscaler": found}
    if scale is not None:
        spec["scale"] = scale
    else:
        spec["width"], spec["height"] = size
    return Extras(spec, None, scale, size)
