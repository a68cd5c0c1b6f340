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
- Precision: the IR holds float32 weights; each compile asks for f32 or bf16
  (`INFERENCE_PRECISION_HINT`). A worker resolves `openvino_precision` once
  (`resolve_precision`: "auto" is bf16 where the device reports BF16) and loads everything in
  it, except an IR with constants beyond bf16's range (`fits_bf16`: a CLIP causal mask made
  of float32's minimum, which bf16 would turn into -inf and then NaN) and upscaler families
  spandrel marks unfit for bf16: those compile in f32.

Stays on torch: the ControlNet add-on, a per-job VAE override, the scheduler, and AuraSR
(its forward draws random noise, which a converted graph would draw differently).

Each wrapper keeps the original module's skeleton on the meta device (no memory) to answer
what diffusers reads (`config`, `add_embedding.linear_1.in_features`, ...), and to compute
ControlNet residual shapes for any input size with a meta-device forward.

The package, by concern: `variants` (CompiledVariants: one IR, compiled per shape, in the
cache), `modules` (the drop-in torch modules), `convert` (torch to IR), `ircache` (the IR on
disk, compile options), `load` (pipelines and upscalers on OpenVINO, and their accounting).
Callers import from here: `from worker import openvino as ovb`.
"""

from worker.openvino.convert import CONVERTER_VERSION, TEXT_ENCODERS, conversion_count
from worker.openvino.ircache import compile_config, fits_bf16, model_identity
from worker.openvino.load import (
    SUPPORTED_PIPELINES,
    drop_variants,
    load_openvino_pipeline,
    openvino_modules,
    openvino_stats,
    openvino_upscaler,
)
from worker.openvino.modules import (
    OpenVINOAutoencoderKL,
    OpenVINOImageModel,
    OpenVINOModule,
    OpenVINOTextEncoder,
    OpenVINOUNet,
)
from worker.openvino.variants import (
    CompiledVariants,
    OpenVINOOutputError,
    UnsupportedOnOpenVINO,
    device_name,
    resolve_precision,
)

__all__ = [
    "CONVERTER_VERSION",
    "SUPPORTED_PIPELINES",
    "TEXT_ENCODERS",
    "CompiledVariants",
    "OpenVINOAutoencoderKL",
    "OpenVINOImageModel",
    "OpenVINOModule",
    "OpenVINOOutputError",
    "OpenVINOTextEncoder",
    "OpenVINOUNet",
    "UnsupportedOnOpenVINO",
    "compile_config",
    "conversion_count",
    "device_name",
    "drop_variants",
    "fits_bf16",
    "load_openvino_pipeline",
    "model_identity",
    "openvino_modules",
    "openvino_stats",
    "openvino_upscaler",
    "resolve_precision",
]
