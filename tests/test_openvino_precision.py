"""Precision as a worker setting: `openvino_precision` (auto / f32 / bf16) and
`torch_cpu_precision` (f32 / bf16 autocast), and what bf16 does to the images.

bf16 is compared with f32 on the demo models by PSNR over images in [0, 1]. The bar, 40 dB,
is an RMS error of 1% of the range (2.6 levels of 255). Measured here (demo-sd15, 8 seeds x
3 settings: 64x64 Euler a 4 steps, 96x64 Euler 8 steps, 128x128 DPM++ 2M 20 steps):
OpenVINO bf16 vs f32 45.8-54.1 dB (median 50.3), torch autocast bf16 vs f32 46.1-53.3 dB;
the lowest are the fewest-step ancestral jobs. Upscalers: demo ESRGAN 73.6 dB, demo
Real-ESRGAN 61.1 dB. So 40 dB leaves ~6 dB for other seeds and prompts, and a real
regression (NaN, a wrong cast, a mask overflowing) lands far below it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from pydantic import ValidationError

from shared.config import Settings
from shared.jobspec import parse_spec
from shared.modelstore import LocalModelStore, ModelInfo
from shared.vocabulary import Hardware
from worker import openvino as ovb
from worker import pipelines
from worker.backend import OpenVINOBackend, make_backend
from worker.cache import ModelCache
from worker.demo_upscalers import DEMO_ESRGAN, DEMO_REALESRGAN
from worker.device import DeviceUnavailable
from worker.upscalers import load_upscaler, upscale

MIN_PSNR_DB = 40.0
CAPABILITIES = [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
HAS_BF16 = "BF16" in CAPABILITIES
needs_bf16 = pytest.mark.skipif(
    not HAS_BF16,
    reason=f"OpenVINO's CPU has no bf16 here (capabilities: {', '.join(CAPABILITIES)})",
)
JOBS = [
    {"width": 64, "height": 64, "steps": 4, "sampler": "Euler a", "seed": 3},
    {"width": 96, "height": 64, "steps": 8, "sampler": "DPM++ 2M", "seed": 11},
]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def render(loaded: pipelines.LoadedPipeline, **fields) -> np.ndarray:
    spec = parse_spec({"model": "demo-sd15", "prompt": "a red fox", **fields}, Settings())
    images, _ = pipelines.txt2img(loaded, spec, pipelines.Addons(), lambda p: None)
    return images


def compiled_precisions(part: ovb.CompiledVariants) -> set[str]:
    """The precision OpenVINO actually compiled each of this IR's variants in."""
    found = set()
    for shapes in part.shapes():
        variant = part.cache.get(part._key(shapes), lambda: None)
        hint = variant.requests[0].get_compiled_model().get_property("INFERENCE_PRECISION_HINT")
        found.add(hint.to_string())  # "bf16", "f32"
    return found


@pytest.fixture(scope="module")
def sd15(models_dir: Path) -> ModelInfo:
    model = LocalModelStore(models_dir).find("demo-sd15", "checkpoint")
    assert model is not None
    return model


@pytest.fixture(scope="module")
def ir_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino-precision-ir")


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    return ModelCache(8 * 2**30, name="openvino-precision-test")


# -- the settings ------------------------------------------------------------------------------


def test_auto_follows_what_the_device_reports(ir_cache, cache):
    backend = OpenVINOBackend(Settings(openvino_cache_dir=ir_cache), cache)
    assert backend.precision == ("bf16" if HAS_BF16 else "f32")
    assert backend.device_info()["precision"] == backend.precision  # in the heartbeat
    forced = OpenVINOBackend(Settings(openvino_cache_dir=ir_cache, openvino_precision="f32"), cache)
    assert forced.precision == forced.device_info()["precision"] == "f32"


def test_a_bad_precision_names_the_setting(monkeypatch):
    with pytest.raises(ValidationError, match="openvino_precision"):
        Settings(openvino_precision="fp16")
    monkeypatch.setenv("RENDERFARM_TORCH_CPU_PRECISION", "half")
    with pytest.raises(ValidationError, match="torch_cpu_precision"):
        Settings()


@pytest.mark.skipif(HAS_BF16, reason="this CPU has bf16: the refusal is for CPUs without it")
def test_bf16_is_refused_where_the_device_has_none(ir_cache, cache):
    with pytest.raises(DeviceUnavailable, match="RENDERFARM_OPENVINO_PRECISION=bf16"):
        OpenVINOBackend(Settings(openvino_cache_dir=ir_cache, openvino_precision="bf16"), cache)


def test_the_torch_cpu_worker_reports_its_precision(cache):
    for precision in ("f32", "bf16"):
        settings = Settings(torch_cpu_precision=precision)
        backend = make_backend(Hardware.CPU, settings, "cpu", cache)
        assert backend.device_info()["precision"] == precision


# -- OpenVINO bf16 against f32 -----------------------------------------------------------------


@needs_bf16
def test_openvino_bf16_images_stay_close_to_f32(sd15, ir_cache, cache):
    f32 = ovb.load_openvino_pipeline(sd15, ir_cache, precision="f32", cache=cache)
    bf16 = ovb.load_openvino_pipeline(sd15, ir_cache, precision="bf16", cache=cache)
    for job in JOBS:
        a, b = render(f32, **job), render(bf16, **job)
        assert a.shape == b.shape == (1, job["height"], job["width"], 3)
        assert np.isfinite(b).all()
        assert not np.array_equal(a, b)  # bf16 really ran
        assert psnr(a, b) >= MIN_PSNR_DB, (job, psnr(a, b))
    pipe = bf16.pipe
    assert compiled_precisions(pipe.unet.parts["unet"]) == {"bf16"}
    assert compiled_precisions(pipe.vae.parts["vae_decoder"]) == {"bf16"}
    # Today's CLIP export masks inside SDPA: no float32-minimum constant, so bf16 too.
    assert compiled_precisions(pipe.text_encoder.parts["text_encoder"]) == {"bf16"}


def test_an_ir_with_constants_beyond_bf16_stays_f32(tmp_path):
    """A CLIP exported with its causal mask as float32's minimum (older transformers) would
    turn it into -inf in bf16, and 0 * -inf into NaN: such an IR is compiled in f32."""
    import openvino.opset13 as ops

    def saved(value: float, name: str) -> Path:
        x = ops.parameter([1, 4], np.float32)
        mask = ops.constant(np.full((1, 4), value, np.float32))
        model = ov.Model([ops.multiply(ops.add(x, mask), x)], [x])
        ov.save_model(model, tmp_path / f"{name}.xml")
        return tmp_path / f"{name}.xml"

    assert not ovb.fits_bf16(saved(float(np.finfo(np.float32).min), "min"))
    assert ovb.fits_bf16(saved(-np.inf, "inf"))  # -inf stays -inf: no new NaN
    assert ovb.fits_bf16(saved(-1e30, "large"))


@needs_bf16
@pytest.mark.parametrize("name", [DEMO_ESRGAN, DEMO_REALESRGAN])
def test_openvino_bf16_upscales_stay_close_to_f32(name, models_dir, ir_cache, cache):
    torch_up = load_upscaler(models_dir / "upscalers" / name)
    ups = {
        p: ovb.openvino_upscaler(torch_up, ir_cache, precision=p, cache=cache)
        for p in ("f32", "bf16")
    }
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:40, 0:48] / 48
    image = np.clip(np.stack([x, y, (x + y) / 2], -1) + rng.normal(0, 0.05, (40, 48, 3)), 0, 1)
    size = (48 * torch_up.scale, 40 * torch_up.scale)
    out = {p: upscale(up, image.astype(np.float32), *size, tile=32) for p, up in ups.items()}
    assert np.isfinite(out["bf16"]).all()
    assert psnr(out["f32"], out["bf16"]) >= MIN_PSNR_DB
    assert compiled_precisions(ups["bf16"].model.parts["model"]) == {"bf16"}


# -- the torch CPU worker's bf16 (autocast) ------------------------------------------------


def test_torch_bf16_autocast_stays_close_to_f32(sd15):
    f32 = pipelines.load_pipeline(sd15, "cpu", torch.float32)
    bf16 = pipelines.load_pipeline(sd15, "cpu", torch.float32, autocast=torch.bfloat16)
    for job in JOBS:
        a, b = render(f32, **job), render(bf16, **job)
        assert np.isfinite(b).all()
        assert not np.array_equal(a, b)
        assert psnr(a, b) >= MIN_PSNR_DB, (job, psnr(a, b))
