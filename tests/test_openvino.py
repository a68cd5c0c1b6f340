"""The OpenVINO backend on real OpenVINO: tiny demo models converted, compiled and compared
with torch on the CPU, through the same `worker.pipelines` code the CPU worker runs."""

from __future__ import annotations

import base64
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.config import Settings
from shared.jobspec import parse_spec
from shared.modelstore import LocalModelStore, ModelInfo
from worker import openvino as ovb
from worker import pipelines
from worker.cache import CacheKey, ModelCache
from worker.demo_upscalers import DEMO_AURA_SR, DEMO_ESRGAN, DEMO_REALESRGAN
from worker.upscalers import load_upscaler, upscale

# fp32 on both sides: the measured differences are ~1e-6 (pipelines) and ~1e-7 (upscalers).
PIPELINE_TOLERANCE = 1e-3
UPSCALER_TOLERANCE = 1e-4
TINY = {"model": "demo-sd15", "prompt": "a red fox", "steps": 4, "seed": 7}


def no_progress(p: float) -> None:
    pass


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def ir_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def sd15(models_dir: Path) -> ModelInfo:
    model = LocalModelStore(models_dir).find("demo-sd15", "checkpoint")
    assert model is not None
    return model


@pytest.fixture(scope="module")
def ir_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("openvino-ir")


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    """The model cache compiled variants go into (a worker's own), with room for them all."""
    return ModelCache(8 * 2**30, name="openvino-test")


@pytest.fixture(scope="module")
def first_load(sd15, ir_cache, cache) -> dict:
    """The first load of demo-sd15: converts to IR (the slow part of this file)."""
    before = ovb.conversion_count()
    started = time.perf_counter()
    loaded = ovb.load_openvino_pipeline(sd15, ir_cache, cache=cache)
    return {
        "loaded": loaded,
        "seconds": time.perf_counter() - started,
        "conversions": ovb.conversion_count() - before,
    }


@pytest.fixture(scope="module")
def ov_pipe(first_load) -> pipelines.LoadedPipeline:
    return first_load["loaded"]


@pytest.fixture(scope="module")
def torch_pipe(sd15) -> pipelines.LoadedPipeline:
    return pipelines.load_pipeline(sd15, "cpu", torch.float32)


def spec(**fields):
    return parse_spec({**TINY, **fields}, Settings())


def render(loaded, **fields) -> tuple[np.ndarray, list[str]]:
    return pipelines.txt2img(loaded, spec(**fields), pipelines.Addons(), no_progress)


# -- the IR cache ------------------------------------------------------------------------------


def test_first_load_converts_unet_vae_and_text_encoder(first_load, ir_cache):
    # unet, vae_encoder, vae_decoder, text_encoder
    assert first_load["conversions"] == 4
    pipe = first_load["loaded"].pipe
    assert isinstance(pipe.unet, ovb.OpenVINOUNet)
    assert isinstance(pipe.vae, ovb.OpenVINOAutoencoderKL)
    assert isinstance(pipe.text_encoder, ovb.OpenVINOTextEncoder)
    # What diffusers reads from the components still answers, from the original configs.
    assert pipe.unet.config.in_channels == 4 and pipe.vae_scale_factor == 8
    assert (ir_cache / "compiled").is_dir()  # OpenVINO's own compile cache


def test_second_load_reads_the_cached_ir(first_load, sd15, ir_cache, cache):
    folders = [p for p in ir_cache.iterdir() if p.name.startswith("demo-sd15-")]
    assert len(folders) == 1
    files = ir_files(folders[0])
    before = ovb.conversion_count()
    started = time.perf_counter()
    again = ovb.load_openvino_pipeline(sd15, ir_cache, cache=cache)
    seconds = time.perf_counter() - started
    assert ovb.conversion_count() == before
    assert ir_files(folders[0]) == files  # nothing written
    assert seconds < first_load["seconds"] / 5, (seconds, first_load["seconds"])
    # The cached IR renders what the fresh conversion rendered.
    expected, _ = render(first_load["loaded"], width=64, height=64)
    image, _ = render(again, width=64, height=64)
    assert np.abs(image - expected).max() < 1e-6


def test_identity_follows_the_source_files(tmp_path):
    (tmp_path / "unet").mkdir()
    weights = tmp_path / "unet" / "w.safetensors"
    weights.write_bytes(b"1234")
    first = ovb.model_identity(tmp_path)
    assert ovb.model_identity(tmp_path) == first
    os.utime(weights, ns=(1, 1))
    assert ovb.model_identity(tmp_path) != first


def test_compile_cache_is_kept_apart_per_device_and_precision(tmp_path):
    # OpenVINO 2026.4 reuses an f32 blob when bf16 is asked for, and it then computes NaN.
    folders = {
        ovb.compile_config(tmp_path, device, precision)["CACHE_DIR"]
        for device in ("CPU", "GPU")
        for precision in ("f32", "bf16")
    }
    assert len(folders) == 4
    assert all(Path(f).is_relative_to(tmp_path / "compiled") for f in folders)


# -- correctness and shapes --------------------------------------------------------------------


def test_txt2img_matches_torch(ov_pipe, torch_pipe):
    ov_image, passes = render(ov_pipe, width=64, height=64)
    torch_image, _ = render(torch_pipe, width=64, height=64)
    assert passes == ["StableDiffusionPipeline"]
    assert ov_image.shape == torch_image.shape == (1, 64, 64, 3)
    assert np.abs(ov_image - torch_image).max() < PIPELINE_TOLERANCE


def test_each_job_gets_exactly_its_size(ov_pipe, cache):
    unet = ov_pipe.pipe.unet.parts["unet"]
    outputs = []
    for width, height in [(64, 64), (96, 64), (64, 64)]:
        images, _ = render(ov_pipe, width=width, height=height)
        assert images.shape == (1, height, width, 3)
        assert np.isfinite(images).all()
        outputs.append(images)
    assert np.array_equal(outputs[0], outputs[2])  # back at 64x64: the same variant, same image
    latents = {key[0] for key in unet.shapes()}
    assert {(2, 4, 8, 8), (2, 4, 8, 12)} <= latents  # one compiled variant per exact shape
    stats = ovb.openvino_stats(ov_pipe)
    assert stats["compiled_variants"] >= 3
    # Each variant is a cache entry, at least as large as the weights it compiled.
    entries = [e for e in cache.stats()["entries"] if e["device"] == "openvino:CPU"]
    assert len(entries) >= stats["compiled_variants"]
    assert unet.nbytes >= unet.count * unet.weight_bytes
    assert cache.bytes_in_use >= stats["compiled_bytes"] > 0


def test_the_cfg_pair_runs_as_two_halves_with_the_same_result(sd15, ir_cache, ov_pipe):
    """The UNet's batch of 2 (CFG) runs as two batch-1 requests on two streams: in f32 the
    image is bit-identical to one batch-2 request."""
    whole = ovb.load_openvino_pipeline(sd15, ir_cache, cache=ModelCache(2**32, name="whole"))
    whole.pipe.unet.parts["unet"].split_batch = False
    split_image, _ = render(ov_pipe, width=64, height=64)
    whole_image, _ = render(whole, width=64, height=64)
    assert np.array_equal(split_image, whole_image)

    def requests(loaded: pipelines.LoadedPipeline) -> int:
        unet = loaded.pipe.unet.parts["unet"]
        return len(unet.cache.get(unet._key(unet.shapes()[0]), lambda: None).requests)

    assert requests(ov_pipe) == (2 if len(os.sched_getaffinity(0)) >= 2 else 1)
    assert requests(whole) == 1


def test_compiled_variants_count_against_the_budget_and_go_with_their_model(
    first_load, sd15, ir_cache
):
    """A cache with room for one job's variants: each new shape evicts the least recently
    used variants, every job still gets exactly its size, and unloading the model drops the
    rest."""
    small = ModelCache(2**40, name="small")
    key = CacheKey.of(sd15.path, "f32", "openvino:CPU")

    def load() -> pipelines.LoadedPipeline:
        return ovb.load_openvino_pipeline(sd15, ir_cache, cache=small)

    with small.use(key, load, on_evict=ovb.drop_variants) as loaded:
        render(loaded, width=64, height=64, steps=2)
        small.budget_bytes = small.bytes_in_use  # room for this job's variants, no more
        for width, height in [(96, 64), (64, 96)]:
            images, _ = render(loaded, width=width, height=height, steps=2)
            assert images.shape == (1, height, width, 3)
            assert small.bytes_in_use <= small.budget_bytes
        # Sizes are measured (resident memory), so how many variants fit varies; the least
        # recently used one, the first job's UNet, is always the first to go.
        assert small.stats()["evictions"] >= 1
        unet = loaded.pipe.unet.parts["unet"]
        assert (2, 4, 8, 8) not in {shapes[0] for shapes in unet.shapes()}
    assert small.unload(key)
    assert len(small) == 0 and small.bytes_in_use == 0  # no variant outlived its model


def test_a_wrong_output_fails_and_never_returns(ov_pipe):
    vae = ov_pipe.pipe.vae
    decoder = vae.parts["vae_decoder"]
    latents = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(ovb.OpenVINOOutputError, match="shape"):
        decoder([latents], [(1, 3, 128, 128)])
    with pytest.raises(ovb.OpenVINOOutputError, match="NaN"):
        vae.decode(torch.full((1, 4, 8, 8), float("nan")))
    # A variant compiled for one shape never serves another (the seed's static-shape bug).
    vae.decode(torch.zeros(1, 4, 8, 8))
    small = decoder.cache.get(decoder._key(((1, 4, 8, 8),)), lambda: None)
    wrong = decoder._key(((1, 4, 16, 16),))
    decoder.cache.get(wrong, lambda: small)  # a cache entry pretending to be another shape
    try:
        with pytest.raises(RuntimeError):
            vae.decode(torch.zeros(1, 4, 16, 16))
    finally:
        decoder.cache.unload(wrong)


def test_img2img_and_inpainting_match_torch(ov_pipe, torch_pipe):
    x = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    init = Image.fromarray(np.stack([x, x.T, np.full_like(x, 90)], -1))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    job = spec(
        kind="img2img", init_image=png_b64(init), width=64, height=64, denoising_strength=0.6
    )
    for m in (None, mask):
        ov_image, passes = pipelines.img2img(ov_pipe, job, pipelines.Addons(), init, m, no_progress)
        torch_image, _ = pipelines.img2img(
            torch_pipe, job, pipelines.Addons(), init, m, no_progress
        )
        assert ov_image.shape == (1, 64, 64, 3)
        assert np.abs(ov_image - torch_image).max() < PIPELINE_TOLERANCE
    assert passes == ["StableDiffusionInpaintPipeline"]
    assert ov_pipe.pipe.vae.parts["vae_encoder"].count >= 1


def test_controlnet_job_runs_its_unet_on_openvino(ov_pipe, torch_pipe, models_dir):
    info = LocalModelStore(models_dir).find("demo-controlnet-sd15", "controlnet")
    controlnet = pipelines.load_controlnet(info, "cpu", torch.float32)  # the add-on: torch
    rng = np.random.default_rng(3)
    control = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    unit = {"model": "demo-controlnet-sd15", "image": png_b64(control)}
    job = spec(width=64, height=64, controlnet=[unit])
    addons = pipelines.Addons(controlnets=[controlnet], control_images=[control])
    ov_image, passes = pipelines.txt2img(ov_pipe, job, addons, no_progress)
    torch_image, _ = pipelines.txt2img(torch_pipe, job, addons, no_progress)
    plain, _ = render(ov_pipe, width=64, height=64)
    assert passes == ["StableDiffusionControlNetPipeline"]
    assert np.abs(ov_image - torch_image).max() < PIPELINE_TOLERANCE
    assert np.abs(ov_image - plain).max() > 0.01  # the residuals reached the compiled UNet


# -- upscalers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [DEMO_ESRGAN, DEMO_REALESRGAN])
def test_upscaler_matches_torch_across_image_sizes(name, models_dir, ir_cache, cache):
    torch_up = load_upscaler(models_dir / "upscalers" / name)
    ov_up = ovb.openvino_upscaler(torch_up, ir_cache, cache=cache)
    assert isinstance(ov_up.model, ovb.OpenVINOImageModel)
    rng = np.random.default_rng(0)
    for height, width in [(20, 28), (36, 44)]:  # two sizes in a row on one upscaler
        image = rng.random((height, width, 3), dtype=np.float32)
        size = (width * torch_up.scale, height * torch_up.scale)
        ov_out = upscale(ov_up, image, *size, tile=32)
        torch_out = upscale(torch_up, image, *size, tile=32)
        assert ov_out.shape == torch_out.shape == (size[1], size[0], 3)
        assert np.abs(ov_out - torch_out).max() < UPSCALER_TOLERANCE
    # Every tile has one shape: one compiled variant served both images.
    assert ov_up.model.parts["model"].shapes() == [((1, 3, 32, 32),)]
    before = ovb.conversion_count()
    ovb.openvino_upscaler(torch_up, ir_cache, cache=cache)
    assert ovb.conversion_count() == before  # the IR is cached


def test_aura_sr_stays_on_torch(models_dir, ir_cache, cache):
    aura = load_upscaler(models_dir / "upscalers" / DEMO_AURA_SR)
    assert ovb.openvino_upscaler(aura, ir_cache, cache=cache) is aura


# -- hires fix ---------------------------------------------------------------------------------


def test_hires_fix_pass_two_is_img2img_on_the_same_components(
    ov_pipe, torch_pipe, models_dir, ir_cache, cache
):
    torch_up = load_upscaler(models_dir / "upscalers" / DEMO_REALESRGAN)
    ov_up = ovb.openvino_upscaler(torch_up, ir_cache, cache=cache)
    job = spec(
        width=64,
        height=64,
        hires={"scale": 2.0, "upscaler": "demo-realesrgan-x2", "denoising_strength": 0.5},
    )
    before = ovb.conversion_count()
    unet = ov_pipe.pipe.unet
    images, passes = pipelines.txt2img(
        ov_pipe, job, pipelines.Addons(), no_progress, lambda img, w, h: upscale(ov_up, img, w, h)
    )
    assert passes == ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"]
    assert images.shape == (1, 128, 128, 3)
    assert ovb.conversion_count() == before  # nothing reloaded or reconverted
    assert ov_pipe.pipe.unet is unet
    assert (2, 4, 16, 16) in {key[0] for key in unet.parts["unet"].shapes()}
    # Pass 2 encoded pass 1's upscaled output (128x128) and denoised it at that size.
    assert ((1, 3, 128, 128),) in ov_pipe.pipe.vae.parts["vae_encoder"].shapes()
    expected, _ = pipelines.txt2img(
        torch_pipe,
        job,
        pipelines.Addons(),
        no_progress,
        lambda img, w, h: upscale(torch_up, img, w, h),
    )
    assert np.abs(images - expected).max() < PIPELINE_TOLERANCE


# -- SDXL (slow to convert: opt in) ----------------------------------------------------------


@pytest.mark.skipif(
    not os.environ.get("RENDERFARM_TEST_OPENVINO_SDXL"),
    reason="converting demo-sdxl takes 30-50 s here; set RENDERFARM_TEST_OPENVINO_SDXL=1",
)
def test_sdxl_matches_torch(models_dir, ir_cache, cache):
    model = LocalModelStore(models_dir).find("demo-sdxl", "checkpoint")
    ov_loaded = ovb.load_openvino_pipeline(model, ir_cache, cache=cache)
    torch_loaded = pipelines.load_pipeline(model, "cpu", torch.float32)
    job = spec(model="demo-sdxl", width=64, height=64)
    ov_image, passes = pipelines.txt2img(ov_loaded, job, pipelines.Addons(), no_progress)
    torch_image, _ = pipelines.txt2img(torch_loaded, job, pipelines.Addons(), no_progress)
    assert passes == ["StableDiffusionXLPipeline"]
    assert np.abs(ov_image - torch_image).max() < PIPELINE_TOLERANCE
