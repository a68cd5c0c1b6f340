"""OpenVINO backend: the same diffusers pipelines, with the heavy modules compiled by OpenVINO.

One pipeline code path. The UNet, the VAE (encoder and decoder) and the text encoder(s) are
converted with OpenVINO's own converter and put back into the ordinary diffusers pipeline as
drop-in `torch.nn.Module` wrappers. So `worker.pipelines` runs unchanged: `from_pipe`, every
sampler, txt2img / img2img / inpainting / hires fix and ControlNet. Switching the pipeline
kind reuses the same compiled components and never reloads or reconverts (seed bug 003).

- Converted IR is cached on disk under `ir_cache/<name>-<identity>/`; the identity hashes the
  source files (paths, sizes, mtimes) and the converter's versions, so a worker start or a
  second load reads the IR and converts nothing. OpenVINO's own compile cache (`CACHE_DIR`)
  is `ir_cache/compiled/<device>-<precision>/`.
- Compiled variants are keyed by the exact shapes of all inputs (static shapes: `reshape`,
  then `compile_model`) and compiled lazily. Each is an entry in the worker's model cache,
  sized by the memory it was measured to take, so variants count against the cache budget
  and are evicted like any model (`openvino_stats` sums them per pipeline). Every output's
  shape is checked against the request and its values must be finite: a wrong output raises
  `OpenVINOOutputError`, never comes back as an image (seed bug 002; optimum-intel's static
  pipelines return the compiled size with only a warning).
- The UNet IR has ControlNet residual inputs; jobs without ControlNet feed zeros (x + 0 == x),
  so one IR serves both and ControlNet jobs run their UNet on OpenVINO too (the ControlNet
  itself, a per-job add-on, stays a torch module).
- Spandrel upscalers (ESRGAN, Real-ESRGAN compact, ...) convert the same way; tiles all have
  one shape, so each tile size is one compiled variant.

Stays on torch: the ControlNet add-on, a per-job VAE override, the scheduler, and AuraSR
(its forward draws random noise, which a converted graph would draw differently).

Each wrapper keeps the original module's skeleton on the meta device (no memory) to answer
what diffusers reads (`config`, `add_embedding.linear_1.in_features`, ...), and to compute
ControlNet residual shapes for any input size with a meta-device forward.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import psutil
import torch

from shared.modelstore import ModelInfo
from worker.cache import CacheKey, EntryLocked, ModelCache
from worker.memory import release_memory
from worker.pipelines import LoadedPipeline
from worker.upscalers import Upscaler

log = logging.getLogger(__name__)

# Bump when the conversion's output changes: IR written by an older converter is not reused.
CONVERTER_VERSION = 1
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")

_conversions = 0  # components converted by this process (tests read it)
_conversions_lock = threading.Lock()


class OpenVINOOutputError(RuntimeError):
    """A compiled model gave an output of the wrong shape, or NaN/inf values."""


class UnsupportedOnOpenVINO(RuntimeError):
    """A model or a call that this backend does not run."""


def conversion_count() -> int:
    """How many components this process has converted to IR (an IR cache hit adds none)."""
    return _conversions


# -- compiled variants -------------------------------------------------------------------------


@cache
def _core() -> ov.Core:
    return ov.Core()


def device_name(device: str) -> str:
    """OpenVINO's full name for `device`; ValueError naming the devices it has if none."""
    core = _core()
    try:
        return str(core.get_property(device, "FULL_DEVICE_NAME"))
    except RuntimeError:  # an unknown name, or a plugin whose driver is missing
        raise ValueError(
            f"OpenVINO has no usable device {device!r} here "
            f"(it sees: {', '.join(core.available_devices)})"
        ) from None


def _rss() -> int:
    return psutil.Process().memory_info().rss


@dataclass
class _Variant:
    """One compiled shape: a cache entry like any loaded model (`memory.NativeMemory`)."""

    request: ov.InferRequest
    weight_bytes: int
    rss_before: int  # the process's resident memory just before this variant compiled
    # Resident memory the process grew by while this variant compiled and first ran: its
    # copy of the weights (reordered for the device) and its activation buffers, which grow
    # with the shape and dominate at large sizes. Measured, not assumed; at least the weights.
    nbytes: int = 0
    ran: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # one call per request

    def native_bytes(self) -> int:
        return max(self.nbytes, self.weight_bytes)


class CompiledVariants:
    """One IR, compiled once per exact input shapes.

    Each compiled shape is an entry in the worker's model cache, keyed by the IR file, the
    device, the precision and the shapes: it counts against the cache's budget, is evicted
    least recently used first like any model, and is locked while it runs. They leave the
    cache with the model they belong to (`drop_variants`).
    """

    def __init__(self, xml: Path, device: str, config: dict[str, str], cache: ModelCache) -> None:
        self.name = xml.stem
        self.xml = xml
        self.device = device
        self.config = config
        self.cache = cache
        # The weights file is memory-mapped, not read: a variant's compile copies what it needs.
        self.model = _core().read_model(xml)
        self.weight_bytes = xml.with_suffix(".bin").stat().st_size

    def _key(self, shapes: tuple[tuple[int, ...], ...]) -> CacheKey:
        variant = ",".join("x".join(map(str, shape)) for shape in shapes)
        precision = self.config.get("INFERENCE_PRECISION_HINT", "")
        return CacheKey.of(self.xml, precision, f"openvino:{self.device}", variant)

    def _entries(self) -> list[dict[str, Any]]:
        """This IR's compiled variants in the cache, least recently used first."""
        path, device = str(self.xml.resolve()), f"openvino:{self.device}"
        return [
            e for e in self.cache.stats()["entries"] if e["path"] == path and e["device"] == device
        ]

    @property
    def count(self) -> int:
        return len(self._entries())

    @property
    def nbytes(self) -> int:
        return sum(e["size_bytes"] for e in self._entries())

    def shapes(self) -> list[tuple[tuple[int, ...], ...]]:
        return [
            tuple(tuple(int(d) for d in shape.split("x")) for shape in e["variant"].split(","))
            for e in self._entries()
        ]

    def drop(self) -> None:
        """Unload every compiled variant of this IR that no call is running."""
        for shapes in self.shapes():
            try:
                self.cache.unload(self._key(shapes))
            except EntryLocked:
                log.warning("OpenVINO %s %s is running; left in the cache", self.name, shapes)

    def __call__(
        self, inputs: Sequence[np.ndarray], expected: Sequence[tuple[int, ...] | None]
    ) -> list[np.ndarray]:
        """Run at exactly these input shapes; outputs checked against `expected` shapes."""
        shapes = tuple(tuple(int(d) for d in x.shape) for x in inputs)
        key = self._key(shapes)
        with (
            self.cache.use(key, lambda: self._compile(shapes), size_hint=self.weight_bytes) as var,
            var.lock,
        ):
            ports = var.request.model_inputs
            feed = [
                np.ascontiguousarray(x, dtype=port.get_element_type().to_dtype())
                for x, port in zip(inputs, ports, strict=True)
            ]
            result = var.request.infer(feed)  # copies outputs out of the request's buffers
            outputs = [result[port] for port in var.request.model_outputs]
            if not var.ran:  # the first run allocated the activation buffers: count them
                var.ran = True
                var.nbytes = max(0, _rss() - var.rss_before)
                self.cache.remeasure(key)
        for i, (out, want) in enumerate(zip(outputs, expected, strict=True)):
            if want is not None and tuple(out.shape) != tuple(want):
                raise OpenVINOOutputError(
                    f"OpenVINO {self.name} output {i} has shape {tuple(out.shape)}; "
                    f"expected {tuple(want)} for inputs {list(shapes)}"
                )
        for out in outputs:
            if out.dtype.kind == "f" and not np.isfinite(out).all():
                raise OpenVINOOutputError(f"OpenVINO {self.name} gave NaN or infinite values")
        return outputs

    def _compile(self, shapes: tuple[tuple[int, ...], ...]) -> _Variant:
        """Compile for exactly these input shapes (static: no other shape can run on it)."""
        if len(shapes) != len(self.model.inputs):
            raise UnsupportedOnOpenVINO(
                f"OpenVINO {self.name} takes {len(self.model.inputs)} inputs, got {len(shapes)}"
            )
        before = _rss()
        started = time.perf_counter()
        model = self.model.clone()  # reshape changes the model: keep the dynamic one intact
        ports = zip(model.inputs, shapes, strict=True)
        model.reshape({port: ov.PartialShape(list(shape)) for port, shape in ports})
        compiled = _core().compile_model(model, self.device, self.config)
        got = tuple(tuple(port.get_shape()) for port in compiled.inputs)
        if got != shapes:  # a model that ignored the reshape would run at another size
            raise OpenVINOOutputError(
                f"OpenVINO {self.name} compiled for {got}, asked for {shapes}"
            )
        log.info(
            "compiled OpenVINO %s for %s in %.2fs",
            self.name,
            list(shapes),
            time.perf_counter() - started,
        )
        return _Variant(compiled.create_infer_request(), self.weight_bytes, before)


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()


# -- drop-in modules ---------------------------------------------------------------------------


class OpenVINOModule(torch.nn.Module):
    """A compiled component standing in for a torch module inside a diffusers pipeline.

    Attributes it does not have are read from the torch module's skeleton on the meta device
    (so `config` and the like answer as before). It has no parameters: tensors come in and go
    out on the CPU as float32, whatever device OpenVINO runs on. `parts` are its compiled IRs.
    """

    def __init__(self, original: torch.nn.Module, parts: dict[str, CompiledVariants]) -> None:
        super().__init__()
        # Not a registered submodule: `parameters()`, `.to()` and memory walks skip it.
        object.__setattr__(self, "_original", original)
        object.__setattr__(self, "parts", parts)
        self.eval()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None or name.startswith("__"):
                raise
            return getattr(original, name)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def to(self, *args: Any, **kwargs: Any) -> OpenVINOModule:
        return self  # compiled for its OpenVINO device; `pipe.to(...)` leaves it there

    def compiled_variants(self) -> int:
        return sum(p.count for p in self.parts.values())

    def compiled_bytes(self) -> int:
        return sum(p.nbytes for p in self.parts.values())

    def ir_bytes(self) -> int:
        return sum(p.weight_bytes for p in self.parts.values())


class OpenVINOUNet(OpenVINOModule):
    """`UNet2DConditionModel.forward` as diffusers calls it (SD 1.5, SDXL, with ControlNet)."""

    def __init__(
        self, original: torch.nn.Module, parts: dict[str, CompiledVariants], meta: dict[str, Any]
    ) -> None:
        super().__init__(original, parts)
        object.__setattr__(self, "added_cond_keys", list(meta["added_cond_keys"]))
        object.__setattr__(self, "down_residuals", int(meta["down_residuals"]))
        object.__setattr__(self, "_residual_shapes", {})

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: Sequence[torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        unsupported = {
            "class_labels": class_labels,
            "timestep_cond": timestep_cond,
            "attention_mask": attention_mask,
            "cross_attention_kwargs": cross_attention_kwargs or None,  # LoRA scale, IP-Adapter
            "down_intrablock_additional_residuals": down_intrablock_additional_residuals,
            "encoder_attention_mask": encoder_attention_mask,
        }
        if names := [k for k, v in unsupported.items() if v is not None]:
            raise UnsupportedOnOpenVINO(f"the OpenVINO UNet does not take {', '.join(names)}")
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            raise UnsupportedOnOpenVINO("ControlNet residuals come as down and mid together")

        batch = sample.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(batch)
        inputs = [sample, t, encoder_hidden_states]
        for key in self.added_cond_keys:
            if not added_cond_kwargs or key not in added_cond_kwargs:
                raise UnsupportedOnOpenVINO(f"this UNet needs added_cond_kwargs[{key!r}]")
            inputs.append(added_cond_kwargs[key])
        if down_block_additional_residuals is None:
            # No ControlNet: zeros, which leave the UNet's result exactly as it was.
            shapes = self.residual_shapes(sample, encoder_hidden_states, added_cond_kwargs)
            inputs += [torch.zeros(s) for s in shapes]
        else:
            residuals = [*down_block_additional_residuals, mid_block_additional_residual]
            if len(residuals) != self.down_residuals + 1:
                raise UnsupportedOnOpenVINO(
                    f"this UNet takes {self.down_residuals} down residuals, "
                    f"got {len(residuals) - 1}"
                )
            inputs += residuals
        (out,) = self.parts["unet"]([_numpy(x) for x in inputs], [tuple(sample.shape)])
        result = torch.from_numpy(out).to(sample.dtype)
        return UNet2DConditionOutput(sample=result) if return_dict else (result,)

    def residual_shapes(
        self,
        sample: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
    ) -> list[torch.Size]:
        """ControlNet residual shapes for these inputs: a forward of the meta skeleton."""
        key = (tuple(sample.shape), tuple(encoder_hidden_states.shape))
        if key not in self._residual_shapes:

            def meta(x: torch.Tensor) -> torch.Tensor:
                return torch.empty(x.shape, dtype=x.dtype, device="meta")

            added = {k: meta(v) for k, v in (added_cond_kwargs or {}).items()} or None
            t = torch.zeros(sample.shape[0], device="meta")
            hidden = meta(encoder_hidden_states)
            with _residual_hooks(self._original) as shapes, torch.no_grad():
                self._original(meta(sample), t, hidden, added_cond_kwargs=added)
            if len(shapes) != self.down_residuals + 1:
                raise UnsupportedOnOpenVINO(f"unexpected UNet residual layout: {len(shapes)}")
            self._residual_shapes[key] = shapes
        return self._residual_shapes[key]


@contextmanager
def _residual_hooks(unet: torch.nn.Module) -> Iterator[list[torch.Size]]:
    """Collect the shapes ControlNet residuals are added to, in the order the UNet takes them:
    conv_in's output, each down block's residual outputs, then the mid block's output."""
    shapes: list[torch.Size] = []
    handles = [unet.conv_in.register_forward_hook(lambda m, i, o: shapes.append(o.shape))]
    for block in unet.down_blocks:
        handles.append(
            block.register_forward_hook(lambda m, i, o: shapes.extend(r.shape for r in o[1]))
        )
    handles.append(unet.mid_block.register_forward_hook(lambda m, i, o: shapes.append(o.shape)))
    try:
        yield shapes
    finally:
        for handle in handles:
            handle.remove()


class OpenVINOAutoencoderKL(OpenVINOModule):
    """`AutoencoderKL.encode` / `decode` as the pipelines call them."""

    def _factor(self) -> int:
        return 2 ** (len(self._original.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from diffusers.models.modeling_outputs import AutoencoderKLOutput

        n, _, h, w = x.shape
        f, channels = self._factor(), 2 * self._original.config.latent_channels
        (moments,) = self.parts["vae_encoder"]([_numpy(x)], [(n, channels, h // f, w // f)])
        # Sampling from the latent distribution stays in torch, with the job's generator.
        dist = DiagonalGaussianDistribution(torch.from_numpy(moments).to(x.dtype))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> Any:
        from diffusers.models.autoencoders.vae import DecoderOutput

        n, _, h, w = z.shape
        f, channels = self._factor(), self._original.config.out_channels
        (image,) = self.parts["vae_decoder"]([_numpy(z)], [(n, channels, h * f, w * f)])
        sample = torch.from_numpy(image).to(z.dtype)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedOnOpenVINO("the OpenVINO VAE runs encode() and decode() only")


class OpenVINOTextEncoder(OpenVINOModule):
    """A transformers text encoder (CLIPTextModel, CLIPTextModelWithProjection, ...)."""

    def __init__(
        self, original: torch.nn.Module, parts: dict[str, CompiledVariants], meta: dict[str, Any]
    ) -> None:
        super().__init__(original, parts)
        module, _, name = meta["output_class"].rpartition(".")
        object.__setattr__(self, "output_class", getattr(importlib.import_module(module), name))
        # [(field, number of tensors)]: the IR's outputs, flattened in this order.
        object.__setattr__(self, "fields", [(f, int(n)) for f, n in meta["fields"]])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise UnsupportedOnOpenVINO("the OpenVINO text encoder takes no attention mask")
        if position_ids is not None or output_attentions:
            raise UnsupportedOnOpenVINO("the OpenVINO text encoder takes input_ids only")
        n, length = input_ids.shape
        config = self._original.config
        expected = {
            "last_hidden_state": (n, length, config.hidden_size),
            "hidden_states": (n, length, config.hidden_size),
            "pooler_output": (n, config.hidden_size),
            "text_embeds": (n, getattr(config, "projection_dim", None)),
        }
        wanted = [expected.get(f) for f, count in self.fields for _ in range(count)]
        flat = self.parts["text_encoder"]([_numpy(input_ids)], wanted)
        values: dict[str, Any] = {}
        i = 0
        for name, count in self.fields:
            tensors = [torch.from_numpy(x) for x in flat[i : i + count]]
            i += count
            if name == "hidden_states":
                if output_hidden_states:
                    values[name] = tuple(tensors)
            else:
                values[name] = tensors[0]
        out = self.output_class(**values)
        return out if return_dict is not False else out.to_tuple()


class OpenVINOImageModel(OpenVINOModule):
    """An image-to-image model (an upscaler's network): (N, C, h, w) -> (N, C', h*s, w*s)."""

    def __init__(
        self, original: torch.nn.Module, parts: dict[str, CompiledVariants], scale: int, out: int
    ) -> None:
        super().__init__(original, parts)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "out_channels", out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        expected = (n, self.out_channels, h * self.scale, w * self.scale)
        (out,) = self.parts["model"]([_numpy(x)], [expected])
        return torch.from_numpy(out).to(x.dtype)


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


# -- the IR cache ------------------------------------------------------------------------------


def _versions() -> str:
    import diffusers
    import transformers

    versions = (ov.__version__, torch.__version__, diffusers.__version__)
    return f"{CONVERTER_VERSION}|{'|'.join(versions)}|{transformers.__version__}"


def model_identity(path: Path) -> str:
    """A hash of the source files (relative paths, sizes, mtimes) and the converter's versions."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256(_versions().encode())
    for f in files:
        stat = f.stat()
        rel = f.relative_to(path).as_posix() if path.is_dir() else f.name
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "model"


def _cached_ir(ir_cache: Path, identity: str, convert: Any) -> Path:
    """The IR folder for `identity`, converting into it first if it is not there yet.

    Written beside the target and renamed into place: a half-written conversion is never
    used, and of two workers converting the same model at once, the first rename wins.
    """
    target = ir_cache / identity
    if (target / "meta.json").is_file():
        return target
    staging = ir_cache / f".{identity}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
    staging.mkdir(parents=True)
    try:
        convert(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        release_memory()  # what the conversion loaded (a whole torch pipeline): give it back
    return target


def compile_config(ir_cache: Path, device: str = "CPU", precision: str = "f32") -> dict[str, str]:
    """Compile options: OpenVINO's compile cache under `ir_cache`, and the precision.

    f32 by default: on CPUs with AMX/AVX512-BF16 OpenVINO would otherwise pick bf16 and drift
    from the torch result; "bf16" is the faster choice where that is acceptable.
    One cache folder per device and precision: OpenVINO 2026.4 hands out a blob compiled for
    f32 when bf16 is asked for (LOADED_FROM_CACHE), and that blob then computes NaN.
    """
    folder = ir_cache / "compiled" / f"{_slug(device)}-{precision}"
    folder.mkdir(parents=True, exist_ok=True)
    return {"CACHE_DIR": str(folder), "INFERENCE_PRECISION_HINT": precision}


# -- loading -----------------------------------------------------------------------------------


def _meta_skeleton(model_path: Path, name: str, library: str, class_name: str) -> torch.nn.Module:
    """The component's module with every weight on the meta device: config, no memory."""
    from accelerate import init_empty_weights

    cls = getattr(importlib.import_module(library), class_name)
    folder = model_path / name
    with init_empty_weights():
        if library == "transformers":
            module = cls(cls.config_class.from_pretrained(folder))
        else:
            module = cls.from_config(cls.load_config(folder))
    return module.eval()


def load_openvino_pipeline(
    model: ModelInfo,
    ir_cache: Path,
    device: str = "CPU",
    *,
    precision: str = "f32",
    cache: ModelCache,
) -> LoadedPipeline:
    """A checkpoint as a diffusers pipeline whose UNet, VAE and text encoders run on OpenVINO.

    Converts on the first load of these files (seconds), reads the cached IR after that.
    Shapes compile lazily, at the first call of each, into `cache` (the worker's model cache);
    `worker.pipelines` uses the result exactly as it uses `load_pipeline`'s.
    """
    from diffusers import DiffusionPipeline

    index = json.loads((Path(model.path) / "model_index.json").read_text())
    if index.get("_class_name") not in SUPPORTED_PIPELINES:
        raise UnsupportedOnOpenVINO(
            f"{model.name} is a {index.get('_class_name')}; the OpenVINO backend runs "
            f"{', '.join(SUPPORTED_PIPELINES)}"
        )
    ir_cache = Path(ir_cache)
    identity = f"{_slug(model.name)}-{model_identity(Path(model.path))}"
    folder = _cached_ir(ir_cache, identity, lambda out: _convert_pipeline(model, out))
    meta = json.loads((folder / "meta.json").read_text())
    config = compile_config(ir_cache, device, precision)

    def part(stem: str, config: dict[str, str] = config) -> CompiledVariants:
        return CompiledVariants(folder / f"{stem}.xml", device, config, cache)

    def skeleton(name: str) -> torch.nn.Module:
        return _meta_skeleton(Path(model.path), name, *index[name])

    converted: dict[str, OpenVINOModule] = {
        "unet": OpenVINOUNet(skeleton("unet"), {"unet": part("unet")}, meta["unet"]),
        "vae": OpenVINOAutoencoderKL(
            skeleton("vae"),
            {"vae_encoder": part("vae_encoder"), "vae_decoder": part("vae_decoder")},
        ),
    }
    for name in TEXT_ENCODERS:
        if name in meta:
            # Always f32: CLIP's causal mask (float32's minimum) overflows to NaN in bf16, and
            # a text encoder runs once per image, so lower precision gains nothing.
            parts = {"text_encoder": part(name, compile_config(ir_cache, device, "f32"))}
            converted[name] = OpenVINOTextEncoder(skeleton(name), parts, meta[name])
    # The rest (tokenizers, scheduler, safety checker, ...) loads as usual; `from_pipe` then
    # builds the pipeline with the wrappers, as every job's pipeline will be built.
    rest = DiffusionPipeline.from_pretrained(
        model.path, local_files_only=True, **dict.fromkeys(converted)
    )
    pipe = type(rest).from_pipe(rest, **converted)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe, pipe.scheduler.config)


# -- upscalers ---------------------------------------------------------------------------------


def _weights_identity(module: torch.nn.Module) -> str:
    digest = hashlib.sha256(f"{_versions()}|{type(module).__qualname__}".encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def openvino_upscaler(
    up: Upscaler,
    ir_cache: Path,
    device: str = "CPU",
    *,
    precision: str = "f32",
    cache: ModelCache,
) -> Upscaler:
    """The upscaler with its network compiled by OpenVINO; same interface, same results.

    Spandrel families only. Any other (AuraSR) is returned as it is, on torch, with a log line:
    its forward draws random noise that a converted graph could not reproduce.
    """
    from spandrel import ImageModelDescriptor

    descriptor = up.forward
    if not isinstance(descriptor, ImageModelDescriptor):
        log.warning("%s upscaler stays on torch: only spandrel models convert", up.family)
        return up
    ir_cache = Path(ir_cache)
    network = up.model
    if up.dtype != torch.float32:
        network = copy.deepcopy(network).float()
    identity = f"upscaler-{_slug(up.family)}-{_weights_identity(network)}"

    def convert(out: Path) -> None:
        started = time.perf_counter()
        req = descriptor.size_requirements
        side = max(req.minimum, 16)
        side = -(-side // req.multiple_of) * req.multiple_of
        example = torch.rand(2, descriptor.input_channels, side, side, generator=_generator())
        _save_ir(_trace_convert(network, (example,)), out / "model.xml")
        (out / "meta.json").write_text(json.dumps({"family": up.family, "scale": up.scale}))
        log.info("converted %s to OpenVINO IR in %.1fs", up.family, time.perf_counter() - started)

    folder = _cached_ir(ir_cache, identity, convert)
    parts = {
        "model": CompiledVariants(
            folder / "model.xml", device, compile_config(ir_cache, device, precision), cache
        )
    }
    skeleton = copy.deepcopy(network).to("meta")
    compiled = OpenVINOImageModel(skeleton, parts, up.scale, descriptor.output_channels)
    # The same descriptor around the compiled network: its padding to the model's size
    # requirements and its clamping to [0, 1] stay exactly as on torch.
    ov_descriptor = copy.copy(descriptor)
    ov_descriptor._model = compiled
    return Upscaler(
        up.family,
        up.scale,
        compiled,
        ov_descriptor,
        torch.device("cpu"),
        torch.float32,
        fixed_tile=up.fixed_tile,
    )


# -- accounting --------------------------------------------------------------------------------


def openvino_modules(obj: Any) -> list[OpenVINOModule]:
    """The compiled components of a LoadedPipeline, a diffusers pipeline or an Upscaler."""
    if isinstance(obj, LoadedPipeline):
        obj = obj.pipe
    if isinstance(obj, Upscaler):
        obj = obj.model
    if isinstance(obj, OpenVINOModule):
        return [obj]
    components = getattr(obj, "components", {}) or {}
    return [m for m in components.values() if isinstance(m, OpenVINOModule)]


def drop_variants(obj: Any) -> None:
    """The cache's `on_evict` for an OpenVINO model: its compiled variants go with it."""
    for module in openvino_modules(obj):
        for part in module.parts.values():
            part.drop()


def openvino_stats(obj: Any) -> dict[str, int]:
    """Compiled variants, the memory they were measured to take, and the IR weights' size:
    for the worker's cache accounting and heartbeat."""
    modules = openvino_modules(obj)
    return {
        "compiled_variants": sum(m.compiled_variants() for m in modules),
        "compiled_bytes": sum(m.compiled_bytes() for m in modules),
        "ir_bytes": sum(m.ir_bytes() for m in modules),
    }
