"""Diffusion pipelines: loading from the model store, and each job kind, top to bottom.

The cached pipeline (`LoadedPipeline`) is never changed by a job. Each job builds its
own pipeline object with `from_pipe` — the task (txt2img / img2img / inpaint), its
sampler, a VAE override and ControlNets — sharing every other component with the
cached one. So the pipeline kind is part of the job, never global state, switching
kinds never reloads weights, and a VAE override cannot outlive its job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetModel,
    DiffusionPipeline,
)
from PIL import Image

from shared.jobspec import DiffusionSpec, Img2ImgSpec, Txt2ImgSpec, hires_size
from shared.modelstore import ModelInfo
from shared.samplers import SAMPLERS
from worker import images

Progress = Callable[[float], None]
TASKS = {
    "txt2img": AutoPipelineForText2Image,
    "img2img": AutoPipelineForImage2Image,
    "inpaint": AutoPipelineForInpainting,
}


@dataclass
class LoadedPipeline:
    pipe: DiffusionPipeline
    # The scheduler config the model shipped with: each job's sampler is built from it.
    scheduler_config: Any
    # CPU bf16 (`torch_cpu_precision`): every job runs under `torch.autocast("cpu", this)`;
    # the weights stay as loaded. None: no autocast.
    autocast: torch.dtype | None = None


def load_pipeline(
    model: ModelInfo, device: str, dtype: torch.dtype, autocast: torch.dtype | None = None
) -> LoadedPipeline:
    """Load a checkpoint folder the same way for the demo models and a real model.

    diffusers picks the pipeline class (SD 1.5, SDXL, ...) from `model_index.json`.
    """
    pipe = DiffusionPipeline.from_pretrained(model.path, torch_dtype=dtype, local_files_only=True)
    pipe.to(device)
    return LoadedPipeline(pipe, pipe.scheduler.config, autocast)


def load_vae(model: ModelInfo, device: str, dtype: torch.dtype) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(model.path, torch_dtype=dtype, local_files_only=True).to(
        device
    )


def load_controlnet(model: ModelInfo, device: str, dtype: torch.dtype) -> ControlNetModel:
    return ControlNetModel.from_pretrained(model.path, torch_dtype=dtype, local_files_only=True).to(
        device
    )


def make_scheduler(sampler: str, config: Any) -> Any:
    class_name, extra = SAMPLERS[sampler]
    return getattr(diffusers, class_name).from_config(config, **extra)


@dataclass
class Addons:
    """Per-job components resolved through the worker's cache."""

    vae: AutoencoderKL | None = None
    controlnets: list[ControlNetModel] = field(default_factory=list)
    control_images: list[Image.Image] = field(default_factory=list)


def job_pipeline(base: LoadedPipeline, task: str, spec: DiffusionSpec, addons: Addons):
    """A pipeline object for this job only, sharing the cached pipeline's components."""
    kwargs: dict[str, Any] = {"scheduler": make_scheduler(spec.sampler, base.scheduler_config)}
    if addons.vae is not None:
        kwargs["vae"] = addons.vae
    if addons.controlnets:
        kwargs["controlnet"] = (
            addons.controlnets[0] if len(addons.controlnets) == 1 else addons.controlnets
        )
    pipe = TASKS[task].from_pipe(base.pipe, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _control_kwargs(spec: DiffusionSpec, addons: Addons, width: int, height: int) -> dict:
    if not addons.controlnets:
        return {}
    units = spec.controlnet
    fitted = [img.resize((width, height)) for img in addons.control_images]
    one = len(units) == 1
    pick = (lambda xs: xs[0]) if one else list  # a single unit takes plain values
    return {
        "controlnet_conditioning_scale": pick([u.conditioning_scale for u in units]),
        "control_guidance_start": pick([u.guidance_start for u in units]),
        "control_guidance_end": pick([u.guidance_end for u in units]),
        "_control_image": pick(fitted),
    }


def denoise_steps(steps: int, strength: float) -> int:
    """Steps to ask an img2img pipeline for, so that at least one denoising step runs.

    diffusers runs int(steps * strength) steps; a low strength would otherwise run none.
    """
    while int(steps * strength) < 1:
        steps += 1
    return steps


def _run_batches(
    pipe,
    spec: DiffusionSpec,
    on_progress: Progress,
    seeds: Sequence[int],
    call: dict[str, Any],
    per_image: Callable[[int], dict[str, Any]] | None = None,
    autocast: torch.dtype | None = None,
) -> list[Any]:
    """Run the pipeline batch_count times; returns one output per seed, in order."""
    results: list[Any] = []
    size = spec.batch_size
    batches = [seeds[i : i + size] for i in range(0, len(seeds), size)]
    for b, batch_seeds in enumerate(batches):

        def step_end(p, step: int, timestep: Any, kwargs: dict, b: int = b) -> dict:
            on_progress((b + (step + 1) / p.num_timesteps) / len(batches))
            return kwargs

        extra = dict(call)
        if per_image is not None:
            extra.update(per_image(b * size))
        n = len(batch_seeds)
        with torch.autocast("cpu", dtype=autocast) if autocast else nullcontext():
            out = pipe(
                prompt=[spec.prompt] * n,
                negative_prompt=[spec.negative_prompt] * n if spec.negative_prompt else None,
                guidance_scale=spec.cfg_scale,
                # One CPU generator per image: a seed gives the same image on any device.
                generator=[torch.Generator("cpu").manual_seed(s) for s in batch_seeds],
                callback_on_step_end=step_end,
                **extra,
            )
        results.extend(out.images)
    return results


def _with_control(call: dict[str, Any], control: dict[str, Any], task: str) -> dict[str, Any]:
    """ControlNet pipelines name the control image `image` (txt2img) or `control_image`."""
    control = dict(control)
    if "_control_image" in control:
        image = control.pop("_control_image")
        control["image" if task == "txt2img" else "control_image"] = image
    return {**call, **control}


def txt2img(
    base: LoadedPipeline,
    spec: Txt2ImgSpec,
    addons: Addons,
    on_progress: Progress,
    upscale_image: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Render; with hires fix, pass 2 is img2img on pass 1's upscaled output.

    `upscale_image(image, width, height)` is the hires upscaler model; None for "latent".

    Returns float images in [0, 1], shape (n, height, width, 3), and the pipeline class
    of each pass (recorded in the manifest).
    """
    seeds = spec.image_seeds()
    pipe = job_pipeline(base, "txt2img", spec, addons)
    hires = spec.hires
    latent_hires = hires is not None and hires.upscaler == "latent"
    call = _with_control(
        {
            "num_inference_steps": spec.steps,
            "width": spec.width,
            "height": spec.height,
            "output_type": "latent" if latent_hires else "np",
        },
        _control_kwargs(spec, addons, spec.width, spec.height),
        "txt2img",
    )
    first_pass = on_progress if hires is None else (lambda p: on_progress(p / 2))
    outputs = _run_batches(pipe, spec, first_pass, seeds, call, autocast=base.autocast)
    passes = [type(pipe).__name__]
    if hires is None:
        return np.stack(outputs), passes
    second, name = hires_pass(base, spec, addons, outputs, upscale_image, on_progress)
    return np.stack(second), [*passes, name]


def hires_pass(
    base: LoadedPipeline,
    spec: Txt2ImgSpec,
    addons: Addons,
    first: list[Any],
    upscale_image: Callable[[np.ndarray, int, int], np.ndarray] | None,
    on_progress: Progress,
) -> tuple[list[Any], str]:
    """Pass 2 of hires fix: upscale pass 1's output and run img2img on it at the target size."""
    assert spec.hires is not None
    width, height = hires_size(spec.width, spec.height, spec.hires.scale)
    if upscale_image is None:  # latent: interpolate pass 1's latents
        factor = base.pipe.vae_scale_factor
        inputs = [
            F.interpolate(lat[None], size=(height // factor, width // factor), mode="bilinear")[0]
            for lat in first
        ]
    else:
        inputs = [images.to_pil(upscale_image(img, width, height)) for img in first]
    pipe = job_pipeline(base, "img2img", spec, addons)
    call = _with_control(
        {
            "num_inference_steps": denoise_steps(
                spec.hires.steps or spec.steps, spec.hires.denoising_strength
            ),
            "strength": spec.hires.denoising_strength,
            "output_type": "np",
        },
        _control_kwargs(spec, addons, width, height),
        "img2img",
    )
    if isinstance(inputs[0], torch.Tensor):
        per_image = lambda i: {"image": torch.stack(inputs[i : i + spec.batch_size])}  # noqa: E731
    else:
        per_image = lambda i: {"image": inputs[i : i + spec.batch_size]}  # noqa: E731
    out = _run_batches(
        pipe,
        spec,
        lambda p: on_progress(0.5 + p / 2),
        spec.image_seeds(),
        call,
        per_image,
        autocast=base.autocast,
    )
    return out, type(pipe).__name__


def img2img(
    base: LoadedPipeline,
    spec: Img2ImgSpec,
    addons: Addons,
    init: Image.Image,
    mask: Image.Image | None,
    on_progress: Progress,
) -> tuple[np.ndarray, list[str]]:
    """img2img, or inpainting when a mask is given (white = repaint)."""
    task = "img2img" if mask is None else "inpaint"
    pipe = job_pipeline(base, task, spec, addons)
    init = images.fit(init, spec.width, spec.height, spec.resize_mode)
    call: dict[str, Any] = {
        "num_inference_steps": denoise_steps(spec.steps, spec.denoising_strength),
        "strength": spec.denoising_strength,
        "output_type": "np",
    }
    if mask is not None:
        mask = images.fit(mask.convert("RGB"), spec.width, spec.height, spec.resize_mode)
        call.update(mask_image=mask.convert("L"), width=spec.width, height=spec.height)
    call = _with_control(call, _control_kwargs(spec, addons, spec.width, spec.height), task)
    call["image"] = [init] * spec.batch_size
    seeds = spec.image_seeds()
    result = np.stack(_run_batches(pipe, spec, on_progress, seeds, call, autocast=base.autocast))
    if mask is not None:
        # As SD-WebUI does: outside the (blurred) mask the init image is kept as it was.
        keep = 1.0 - images.to_float(call["mask_image"])[..., None]
        result = keep * images.to_float(init) + (1.0 - keep) * result
    return result, [type(pipe).__name__]
