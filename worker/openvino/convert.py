"""Conversion: torch modules traced or exported to OpenVINO IR (a whole diffusers pipeline's
UNet, VAE and text encoders), the export wrappers, and the count of conversions."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import openvino as ov
import torch

from shared.modelstore import ModelInfo
from worker.openvino.modules import _residual_hooks
from worker.openvino.variants import UnsupportedOnOpenVINO

log = logging.getLogger(__name__)

# Bump when the conversion's output changes: IR written by an older converter is not reused.
CONVERTER_VERSION = 1
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

_conversions = 0  # components converted by this process (tests read it)
_conversions_lock = threading.Lock()


def conversion_count() -> int:
    """How many components this process has converted to IR (an IR cache hit adds none)."""
    return _conversions


# -- conversion --------------------------------------------------------------------------------


def _trace_convert(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> ov.Model:
    """TorchScript trace (as optimum-intel does; `check_trace` off: it doubles the time).

    The traced shape arithmetic stays symbolic, so the IR takes any shape until reshaped.
    """
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    with torch.no_grad():
        decoder = TorchScriptPythonDecoder(
            module.eval(), example_input=example, trace_kwargs={"check_trace": False}
        )
        return ov.convert_model(decoder)


def _export_convert(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> ov.Model:
    """torch.export, every dimension dynamic: transformers' attention masks do not trace
    with TorchScript (they get tensors where they expect ints)."""
    from torch.export import Dim

    dynamic = tuple({d: Dim.AUTO for d in range(x.ndim)} for x in example)
    with torch.no_grad():
        program = torch.export.export(module.eval(), example, dynamic_shapes=dynamic)
    return ov.convert_model(program)


def _save_ir(model: ov.Model, xml: Path) -> None:
    global _conversions
    ov.save_model(model, xml, compress_to_fp16=False)  # fp32 weights, as torch has them
    with _conversions_lock:
        _conversions += 1


class _UNetForExport(torch.nn.Module):
    """The UNet with flat positional inputs: added conditions, then ControlNet residuals."""

    def __init__(self, unet: torch.nn.Module, added_keys: list[str], down: int) -> None:
        super().__init__()
        self.unet, self.added_keys, self.down = unet, added_keys, down

    def forward(self, sample, timestep, encoder_hidden_states, *extra):  # noqa: ANN001
        k = len(self.added_keys)
        added = dict(zip(self.added_keys, extra[:k], strict=True)) or None
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states,
            added_cond_kwargs=added,
            down_block_additional_residuals=list(extra[k : k + self.down]),
            mid_block_additional_residual=extra[k + self.down],
            return_dict=False,
        )[0]


class _DecodeForExport(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]


class _EncodeForExport(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.parameters  # mean and log-variance: "moments"


class _TextEncoderForExport(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.encoder(input_ids, output_hidden_states=True, return_dict=True)
        flat: list[torch.Tensor] = []
        for value in out.values():
            flat.extend(value if isinstance(value, tuple) else [value])
        return tuple(flat)


def _generator() -> torch.Generator:
    """Example inputs from a local generator: converting leaves the global RNG alone."""
    return torch.Generator().manual_seed(0)


class _Captured(Exception):
    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.args_, self.kwargs = args, kwargs


def _unet_example_call(pipe: Any) -> tuple[tuple, dict]:
    """The UNet's arguments in a real call, captured at the first step of a tiny render.

    The latent size is one more than a multiple of the UNet's overall downsampling, so the
    traced graph takes the branch that upsamples to the skip connections' sizes: valid for
    every size, where the other branch is only valid for multiples.
    """
    unet = pipe.unet

    def capture(module: Any, args: tuple, kwargs: dict) -> None:
        raise _Captured(args, kwargs)

    side = (2**unet.num_upsamplers + 1) * pipe.vae_scale_factor
    handle = unet.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        pipe(
            prompt="a",
            num_inference_steps=1,
            width=side,
            height=side,
            guidance_scale=7.0,
            generator=_generator(),
        )
    except _Captured as call:
        return call.args_, call.kwargs
    finally:
        handle.remove()
    raise UnsupportedOnOpenVINO(f"{type(pipe).__name__} never called its UNet")


def _convert_unet(pipe: Any, out: Path) -> dict[str, Any]:
    args, kwargs = _unet_example_call(pipe)
    names = ["sample", "timestep", "encoder_hidden_states"]
    call = {**dict(zip(names, args, strict=False)), **kwargs}
    sample, hidden = call["sample"], call["encoder_hidden_states"]
    timestep = torch.as_tensor(call["timestep"], dtype=torch.float32).reshape(-1)
    timestep = timestep.expand(sample.shape[0]).contiguous()
    added = call.get("added_cond_kwargs") or {}
    added_keys = sorted(added)
    with _residual_hooks(pipe.unet) as shapes, torch.no_grad():
        pipe.unet(sample, timestep, hidden, added_cond_kwargs=added or None)
    residuals = [torch.zeros(s) for s in shapes]
    module = _UNetForExport(pipe.unet, added_keys, len(residuals) - 1)
    example = (sample, timestep, hidden, *(added[k] for k in added_keys), *residuals)
    _save_ir(_trace_convert(module, example), out / "unet.xml")
    return {"added_cond_keys": added_keys, "down_residuals": len(residuals) - 1}


def _convert_vae(pipe: Any, out: Path) -> dict[str, Any]:
    vae, f = pipe.vae, pipe.vae_scale_factor
    latent = torch.randn(2, vae.config.latent_channels, 9, 9, generator=_generator())
    _save_ir(_trace_convert(_DecodeForExport(vae), (latent,)), out / "vae_decoder.xml")
    image = torch.rand(2, vae.config.in_channels, 9 * f, 9 * f, generator=_generator()) * 2 - 1
    _save_ir(_trace_convert(_EncodeForExport(vae), (image,)), out / "vae_encoder.xml")
    return {}


def _convert_text_encoder(encoder: torch.nn.Module, xml: Path) -> dict[str, Any]:
    length = encoder.config.max_position_embeddings
    ids = torch.randint(0, encoder.config.vocab_size, (2, length), generator=_generator())
    with torch.no_grad():
        sample = encoder(ids, output_hidden_states=True, return_dict=True)
    fields = [(k, len(v) if isinstance(v, tuple) else 1) for k, v in sample.items()]
    _save_ir(_export_convert(_TextEncoderForExport(encoder), (ids,)), xml)
    cls = type(sample)
    return {"output_class": f"{cls.__module__}.{cls.__qualname__}", "fields": fields}


def _convert_pipeline(model: ModelInfo, out: Path) -> None:
    from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel

    started = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(
        model.path, torch_dtype=torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    if not isinstance(pipe.unet, UNet2DConditionModel) or not isinstance(pipe.vae, AutoencoderKL):
        raise UnsupportedOnOpenVINO(f"{model.name}: not a UNet + AutoencoderKL pipeline")
    components: dict[str, dict[str, Any]] = {}
    for name in TEXT_ENCODERS:
        if getattr(pipe, name, None) is not None:
            components[name] = _convert_text_encoder(getattr(pipe, name), out / f"{name}.xml")
    components["unet"] = _convert_unet(pipe, out)
    components["vae"] = _convert_vae(pipe, out)
    meta = {"converter_version": CONVERTER_VERSION, "source": str(model.path), **components}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    log.info("converted %s to OpenVINO IR in %.1fs", model.name, time.perf_counter() - started)
