"""Loading: a checkpoint as a diffusers pipeline and a spandrel upscaler with their heavy
modules on OpenVINO (converted through the IR cache); the accounting of their compiled
variants for the worker's cache (`drop_variants`, its `on_evict`) and heartbeat."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from shared.modelstore import ModelInfo
from worker.cache import ModelCache
from worker.openvino.convert import (
    TEXT_ENCODERS,
    _convert_pipeline,
    _generator,
    _save_ir,
    _trace_convert,
)
from worker.openvino.ircache import (
    _cached_ir,
    _slug,
    _versions,
    compile_config,
    fits_bf16,
    model_identity,
)
from worker.openvino.modules import (
    OpenVINOAutoencoderKL,
    OpenVINOImageModel,
    OpenVINOModule,
    OpenVINOTextEncoder,
    OpenVINOUNet,
)
from worker.openvino.variants import CompiledVariants, UnsupportedOnOpenVINO
from worker.pipelines import LoadedPipeline
from worker.upscalers import Upscaler

log = logging.getLogger(__name__)

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


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


def _precision_for(xml: Path, precision: str) -> str:
    """bf16 only where the IR holds no constant bf16 cannot represent: a CLIP whose causal
    mask is float32's minimum (as older transformers exported it) would get -inf there, and
    0 * -inf is NaN. Today's exports use SDPA's masks and have none (README)."""
    if precision == "bf16" and not fits_bf16(xml):
        log.info("%s runs in f32: it has constants beyond bf16's range", xml.parent.name)
        return "f32"
    return precision


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

    def part(stem: str, split: bool = False) -> CompiledVariants:
        xml = folder / f"{stem}.xml"
        config = compile_config(ir_cache, device, _precision_for(xml, precision))
        return CompiledVariants(xml, device, config, cache, split_batch=split)

    def skeleton(name: str) -> torch.nn.Module:
        return _meta_skeleton(Path(model.path), name, *index[name])

    converted: dict[str, OpenVINOModule] = {
        # The UNet's batch is the CFG pair (or pairs): independent halves, run side by side.
        "unet": OpenVINOUNet(skeleton("unet"), {"unet": part("unet", split=True)}, meta["unet"]),
        "vae": OpenVINOAutoencoderKL(
            skeleton("vae"),
            {"vae_encoder": part("vae_encoder"), "vae_decoder": part("vae_decoder")},
        ),
    }
    for name in TEXT_ENCODERS:
        if name in meta:
            parts = {"text_encoder": part(name)}
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
    """The upscaler with its network compiled by OpenVINO; same interface, same results
    (bf16: within rounding of the f32 result, see the README).

    Spandrel families only. Any other (AuraSR) is returned as it is, on torch, with a log line:
    its forward draws random noise that a converted graph could not reproduce. A family that
    spandrel marks as unfit for bfloat16 (`supports_bfloat16`) runs in f32 whatever is asked.
    """
    from spandrel import ImageModelDescriptor

    descriptor = up.forward
    if not isinstance(descriptor, ImageModelDescriptor):
        log.warning("%s upscaler stays on torch: only spandrel models convert", up.family)
        return up
    if precision == "bf16" and not descriptor.supports_bfloat16:
        log.info("%s upscaler runs in f32: spandrel marks it unfit for bf16", up.family)
        precision = "f32"
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
    xml = folder / "model.xml"
    config = compile_config(ir_cache, device, _precision_for(xml, precision))
    parts = {"model": CompiledVariants(xml, device, config, cache)}
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
