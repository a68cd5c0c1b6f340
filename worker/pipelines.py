"""Loading diffusers pipelines from the model store and running them, top to bottom."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline

from shared.jobspec import JobSpec
from shared.modelstore import ModelInfo
from shared.samplers import SAMPLERS


@dataclass
class LoadedPipeline:
    pipe: DiffusionPipeline
    # The scheduler config the model shipped with: each job's sampler is built from
    # it, so one job's sampler options never leak into the next job.
    scheduler_config: Any


def load_pipeline(model: ModelInfo, device: str, dtype: torch.dtype) -> LoadedPipeline:
    """Load a checkpoint folder the same way for the demo models and a real model."""
    pipe = DiffusionPipeline.from_pretrained(model.path, torch_dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    return LoadedPipeline(pipe, pipe.scheduler.config)


def make_scheduler(sampler: str, config: Any) -> Any:
    class_name, extra = SAMPLERS[sampler]
    return getattr(diffusers, class_name).from_config(config, **extra)


def txt2img(
    loaded: LoadedPipeline, spec: JobSpec, on_progress: Callable[[float], None]
) -> np.ndarray:
    """Render the spec; returns float images in [0, 1], shape (batch, height, width, 3)."""
    pipe = loaded.pipe
    pipe.scheduler = make_scheduler(spec.sampler, loaded.scheduler_config)
    # One CPU generator per image: the same seed gives the same image on any device.
    generators = [torch.Generator("cpu").manual_seed(s) for s in spec.image_seeds()]

    def step_end(p: DiffusionPipeline, step: int, timestep: Any, kwargs: dict) -> dict:
        on_progress((step + 1) / p.num_timesteps)
        return kwargs

    result = pipe(
        prompt=spec.prompt,
        negative_prompt=spec.negative_prompt or None,
        num_inference_steps=spec.steps,
        guidance_scale=spec.cfg_scale,
        width=spec.width,
        height=spec.height,
        num_images_per_prompt=spec.batch_size,
        generator=generators,
        callback_on_step_end=step_end,
        output_type="np",
    )
    return np.asarray(result.images)
