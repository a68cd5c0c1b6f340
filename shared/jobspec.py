"""The job spec: what a client asks for, validated before anything is recorded or queued."""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.config import get_settings
from shared.samplers import SAMPLERS

MAX_SEED = 2**32 - 1
Hardware = Literal["cpu", "openvino", "gpu", "auto"]


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["txt2img"] = "txt2img"
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
    sampler: str = "Euler a"
    hardware: Hardware = "auto"

    @field_validator("steps")
    @classmethod
    def _steps_bounded(cls, v: int) -> int:
        limit = get_settings().max_steps
        if v > limit:
            raise ValueError(f"must be at most {limit}")
        return v

    @field_validator("width", "height")
    @classmethod
    def _dimension(cls, v: int, info) -> int:
        settings = get_settings()
        limit = settings.max_width if info.field_name == "width" else settings.max_height
        if v % 8:
            raise ValueError("must be a multiple of 8")
        if not 64 <= v <= limit:
            raise ValueError(f"must be between 64 and {limit}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_bounded(cls, v: int) -> int:
        limit = get_settings().max_batch_size
        if v > limit:
            raise ValueError(f"must be at most {limit}")
        return v

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, v: str) -> str:
        if v not in SAMPLERS:
            raise ValueError(f"unknown sampler {v!r}; known: {', '.join(SAMPLERS)}")
        return v

    def with_seed(self) -> JobSpec:
        """The spec with a concrete seed, chosen at random when the client left it open."""
        if self.seed is not None and self.seed >= 0:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})

    def image_seeds(self) -> list[int]:
        """One seed per image, SD-WebUI style: seed, seed+1, ..."""
        assert self.seed is not None and self.seed >= 0, "resolve the seed first"
        return [(self.seed + i) % (MAX_SEED + 1) for i in range(self.batch_size)]


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as [{field, reason}] for API answers."""
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "reason": err["msg"]}
        for err in exc.errors()
    ]
