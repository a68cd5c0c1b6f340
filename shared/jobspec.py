"""Job specs: what a client asks for, validated before anything is recorded or queued.

One spec class per job kind, told apart by `kind` (default `txt2img`). Parameters are
named as SD-WebUI users know them. Images (init image, mask, control images, the image to
upscale) arrive as base64 PNG/JPEG (a data URL is fine); the scheduler stores them
content-addressed under `inputs/` and the recorded spec names that key instead.

The farm's limits (size, steps, batch) are its `Settings`, passed in as pydantic's
validation context by `parse_spec`: a submission is checked against the settings of the
farm that receives it. `load_spec` reads back a recorded spec, which was checked then.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.config import Settings
from shared.samplers import SAMPLERS
from shared.vocabulary import AUTO, Hardware, JobKind

MAX_SEED = 2**32 - 1
MAX_IMAGE_BYTES = 32 * 2**20
MIN_OUTPUT_SIDE = 16
INPUT_KEY = re.compile(r"^inputs/[0-9a-f]{64}\.png$")
KIND_TAGS = tuple(JobKind)
# A worker class, or `auto`: any live worker that can run the job.
HardwareChoice = Literal[tuple(h.value for h in Hardware) + (AUTO,)]  # type: ignore[valid-type]


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


def decode_image(value: str, max_pixels: int | None = None) -> bytes:
    """Base64 (or a data URL) → the bytes of a PNG/JPEG/WebP image; ValueError if it is not one,
    or has more than `max_pixels` (read from its header: a decompression bomb is never decoded).
    """
    from PIL import Image

    data = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be a base64-encoded image or an inputs/<sha256>.png key") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise ValueError(f"image is larger than {MAX_IMAGE_BYTES >> 20} MiB")
    try:
        # Only these: Pillow would hand an EPS to Ghostscript, and read dozens of formats
        # nobody sends a diffusion model.
        with Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS) as im:
            width, height = im.size
            if max_pixels is None or width * height <= max_pixels:
                im.verify()
    except Image.DecompressionBombError:  # more pixels than Pillow opens at all (~179 MP)
        limit = f"the farm's {max_pixels / 1e6:.1f} MP" if max_pixels else "the"
        raise ValueError(f"has more pixels than {limit} limit for input images") from None
    except Exception:
        raise ValueError("is not a readable image (PNG, JPEG or WebP)") from None
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"is {width}x{height} ({width * height / 1e6:.1f} MP), larger than the farm's "
            f"{max_pixels / 1e6:.1f} MP limit for input images"
        )
    return raw


def input_key(raw: bytes) -> str:
    return f"inputs/{hashlib.sha256(raw).hexdigest()}.png"


def _image_ref(value: str, info: ValidationInfo) -> str:
    if not INPUT_KEY.match(value):
        settings = farm_limits(info)
        decode_image(value, settings.max_input_pixels if settings else None)
    return value


def output_size_error(width: int, height: int, settings: Settings) -> str | None:
    """Why an output of this size is refused (None: it is fine). Outputs are bounded in
    pixels, so no request can hold a worker and its memory without end."""
    pixels, limit = width * height, settings.max_output_pixels
    if pixels > limit:
        return (
            f"to {width}x{height} ({pixels / 1e6:.1f} MP): larger than the farm's "
            f"{limit / 1e6:.1f} MP limit for an output image"
        )
    if min(width, height) < MIN_OUTPUT_SIDE:
        return f"to {width}x{height}: each side must be at least {MIN_OUTPUT_SIDE} pixels"
    return None


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hardware: HardwareChoice = AUTO

    def with_seed(self) -> _Spec:
        return self

    def image_seeds(self) -> list[int]:
        return []

    def output_count(self) -> int:
        return 1

    def output_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def image_fields(self) -> list[tuple[str, ...]]:
        """Paths (field names / indexes) of every image input in this spec."""
        return []

    def images(self) -> dict[str, str]:
        """Every image input by its field's dotted name (`init_image`, `controlnet.0.image`):
        its base64 as sent, or its `inputs/` key once stored."""
        found = {}
        for path in self.image_fields():
            value: Any = self
            for part in path:
                value = value[int(part)] if part.isdigit() else getattr(value, part)
            found[".".join(path)] = value
        return found

    def required_models(self) -> list[tuple[str, str, str]]:
        """Every model the job needs from the store, as (field, family, name)."""
        return []


def farm_limits(info: ValidationInfo) -> Settings | None:
    """The settings a submission is checked against (None: a recorded spec, checked before)."""
    return (info.context or {}).get("settings")


def _check_dimension(v: int, info: ValidationInfo) -> int:
    if v % 8:
        raise ValueError("must be a multiple of 8")
    settings = farm_limits(info)
    if settings is None:
        if v < 64:
            raise ValueError("must be at least 64")
        return v
    limit = settings.max_height if "height" in info.field_name else settings.max_width
    if not 64 <= v <= limit:
        raise ValueError(f"must be between 64 and {limit}")
    return v


def _check_steps(v: int | None, info: ValidationInfo) -> int | None:
    """Denoising steps (of either pass: a hires fix's too) within the farm's limit."""
    if v is not None and (settings := farm_limits(info)) and v > settings.max_steps:
        raise ValueError(f"must be at most {settings.max_steps}")
    return v


class ControlNetUnit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=200)
    image: str
    conditioning_scale: float = Field(default=1.0, ge=0.0, le=2.0)
    guidance_start: float = Field(default=0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(default=1.0, ge=0.0, le=1.0)

    _image = field_validator("image")(lambda cls, v, info: _image_ref(v, info))

    @model_validator(mode="after")
    def _ordered(self) -> ControlNetUnit:
        if self.guidance_start >= self.guidance_end:
            raise ValueError("guidance_start must be below guidance_end")
        return self


class HiresFix(BaseModel):
    """SD-WebUI's hires fix: render at base size, upscale, then img2img at the target size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = Field(default=2.0, gt=1.0, le=4.0)
    # "latent" (interpolate the latents) or the name of an upscaler model.
    upscaler: str = "latent"
    steps: int | None = Field(default=None, ge=1)  # None: the same as the first pass
    denoising_strength: float = Field(default=0.55, gt=0.0, le=1.0)

    _steps = field_validator("steps")(_check_steps)


class DiffusionSpec(_Spec):
    model: str = Field(min_length=1, max_length=200)
    prompt: str = Field(max_length=10_000)
    negative_prompt: str = Field(default="", max_length=10_000)
    steps: int = Field(default=20, ge=1)
    cfg_scale: float = Field(default=7.0, ge=0.0, le=30.0)
    # None (or -1, as SD-WebUI clients send) means "pick one"; the scheduler records it.
    seed: int | None = Field(default=None, ge=-1, le=MAX_SEED)
    width: int = 512
    height: int = 512
    batch_size: int = Field(default=1, ge=1)
    batch_count: int = Field(default=1, ge=1, le=100)
    sampler: str = "Euler a"
    # None / "automatic": the checkpoint's own VAE; otherwise a VAE from the store, this job only.
    vae: str | None = Field(default=None, max_length=200)
    controlnet: list[ControlNetUnit] = Field(default_factory=list, max_length=4)

    _dims = field_validator("width", "height")(_check_dimension)

    _steps = field_validator("steps")(_check_steps)

    @field_validator("batch_size")
    @classmethod
    def _batch_bounded(cls, v: int, info: ValidationInfo) -> int:
        if (settings := farm_limits(info)) and v > settings.max_batch_size:
            raise ValueError(f"must be at most {settings.max_batch_size}")
        return v

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; known: {', '.join(SAMPLERS)}")
        return v

    @field_validator("vae")
    @classmethod
    def _automatic_vae(cls, v: str | None) -> str | None:
        return None if v in (None, "", "none", "None", "automatic", "Automatic") else v

    def with_seed(self) -> DiffusionSpec:
        """The spec with a concrete seed, chosen at random when the client left it open."""
        if self.seed is not None and self.seed >= 0:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})

    def image_seeds(self) -> list[int]:
        """One seed per image over all batches, SD-WebUI style: seed, seed+1, ..."""
        assert self.seed is not None and self.seed >= 0, "resolve the seed first"
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.output_count())]

    def output_count(self) -> int:
        return self.batch_size * self.batch_count

    def output_size(self) -> tuple[int, int]:
        return self.width, self.height

    def image_fields(self) -> list[tuple[str, ...]]:
        return [("controlnet", str(i), "image") for i in range(len(self.controlnet))]

    def required_models(self) -> list[tuple[str, str, str]]:
        needed = [("model", "checkpoint", self.model)]
        if self.vae:
            needed.append(("vae", "vae", self.vae))
        needed += [
            (f"controlnet.{i}.model", "controlnet", unit.model)
            for i, unit in enumerate(self.controlnet)
        ]
        return needed


# Each spec class is tagged by its kind's value (the tag pydantic reports on a bad `kind`).
class Txt2ImgSpec(DiffusionSpec):
    kind: Literal[JobKind.TXT2IMG.value] = JobKind.TXT2IMG
    hires: HiresFix | None = None

    @field_validator("hires")
    @classmethod
    def _hires_bounded(cls, v: HiresFix | None, info: ValidationInfo) -> HiresFix | None:
        settings = farm_limits(info)
        if v is None or settings is None or not {"width", "height"} <= info.data.keys():
            return v
        size = hires_size(info.data["width"], info.data["height"], v.scale)
        if reason := output_size_error(*size, settings):
            raise ValueError(f"the second pass would render {reason}")
        return v

    def output_size(self) -> tuple[int, int]:
        if self.hires is None:
            return self.width, self.height
        return hires_size(self.width, self.height, self.hires.scale)

    def required_models(self) -> list[tuple[str, str, str]]:
        needed = super().required_models()
        if self.hires and self.hires.upscaler != "latent":
            needed.append(("hires.upscaler", "upscaler", self.hires.upscaler))
        return needed


def hires_upscaler_name(upscaler: str) -> str:
    """A hires fix's upscaler as SD-WebUI's infotext names it ("Latent"; clients send the
    infotext's name back as hr_upscaler)."""
    return "Latent" if upscaler == "latent" else upscaler


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The hires-fix target size: scaled, rounded down to a multiple of 8."""
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


class Img2ImgSpec(DiffusionSpec):
    """img2img; with a `mask` it is inpainting (white = repaint)."""

    kind: Literal[JobKind.IMG2IMG.value] = JobKind.IMG2IMG
    init_image: str
    denoising_strength: float = Field(default=0.75, gt=0.0, le=1.0)
    resize_mode: Literal["just_resize", "crop_and_resize", "resize_and_fill"] = "just_resize"
    mask: str | None = None
    mask_blur: int = Field(default=4, ge=0, le=64)

    _images = field_validator("init_image", "mask")(
        lambda cls, v, info: v if v is None else _image_ref(v, info)
    )

    def image_fields(self) -> list[tuple[str, ...]]:
        fields = [("init_image",)] + ([("mask",)] if self.mask else [])
        return fields + super().image_fields()


class UpscaleSpec(_Spec):
    kind: Literal[JobKind.UPSCALE.value]
    image: str
    upscaler: str = Field(min_length=1, max_length=200)
    # Either a scale factor or an exact target size (both width and height).
    scale: float | None = Field(default=None, gt=0.0, le=16.0)
    width: int | None = Field(default=None, ge=1)
    height: int | None = Field(default=None, ge=1)
    tile: int = Field(default=256, ge=32, le=2048)
    # Drop the upscaler from the worker's cache when the job is done.
    unload_after: bool = False

    _image = field_validator("image")(lambda cls, v, info: _image_ref(v, info))

    @model_validator(mode="after")
    def _scale_or_size(self, info: ValidationInfo) -> UpscaleSpec:
        sized = (self.width is not None, self.height is not None)
        if self.scale is None and sized != (True, True):
            raise ValueError("give either scale, or both width and height")
        if self.scale is not None and any(sized):
            raise ValueError("give either scale, or width and height, not both")
        settings = farm_limits(info)
        if settings and (
            (self.width or 0) > settings.max_width * 4
            or (self.height or 0) > settings.max_height * 4
        ):
            raise ValueError("target size is larger than 4x the farm's maximum image size")
        return self

    def image_fields(self) -> list[tuple[str, ...]]:
        return [("image",)]

    def required_models(self) -> list[tuple[str, str, str]]:
        return [("upscaler", "upscaler", self.upscaler)]


AnySpec = Txt2ImgSpec | Img2ImgSpec | UpscaleSpec
JobSpec = Annotated[AnySpec, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


def parse_spec(data: object, settings: Settings) -> AnySpec:
    """Validate a client's spec (a dict) against the farm's limits; `kind` defaults to txt2img."""
    if isinstance(data, dict) and "kind" not in data:
        data = {**data, "kind": JobKind.TXT2IMG}
    return _ADAPTER.validate_python(data, context={"settings": settings})


def load_spec(data: object) -> AnySpec:
    """A spec read back from a job record: it was checked against the limits at submission,
    so a farm that lowers its limits still runs what it accepted."""
    return _ADAPTER.validate_python(data)


def error_reason(err: Any) -> str:
    """One pydantic error's words: our validators' own, without pydantic's "Value error, "
    before them (both APIs answer with these)."""
    return str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as [{field, reason}] for API answers (the union's kind tag left out)."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in KIND_TAGS:
            loc = loc[1:]
        if err["type"] == "union_tag_invalid":
            loc = ["kind"]
        out.append({"field": ".".join(loc) or "body", "reason": error_reason(err)})
    return out


# -- output sizes ------------------------------------------------------------------------


def target_size(
    width: int,
    height: int,
    scale: float | None = None,
    target_width: int | None = None,
    target_height: int | None = None,
) -> tuple[int, int]:
    """The output (width, height) for a scale factor or a target size.

    With only one of `target_width` / `target_height`, the other keeps the aspect ratio.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    sized = target_width is not None or target_height is not None
    if sized == (scale is not None):
        raise ValueError("give either a scale factor or a target size")
    if scale is not None:
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be positive, got {scale}")
        return max(1, round(width * scale)), max(1, round(height * scale))
    if target_width is None:
        assert target_height is not None
        target_width = max(1, round(width * target_height / height))
    if target_height is None:
        target_height = max(1, round(height * target_width / width))
    if target_width < 1 or target_height < 1:
        raise ValueError(f"target size must be positive, got {target_width}x{target_height}")
    return target_width, target_height
