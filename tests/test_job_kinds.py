"""Every job kind through the real worker process, checked as a user would check the result."""

import base64
import hashlib
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image, ImageOps

from shared.client import ApiError
from tests.conftest import BUCKET, s3_client

TINY = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 4, "seed": 11}


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def png_b64(image: Image.Image) -> str:
    return base64.b64encode(encoded(image, "PNG")).decode()


def pixels(farm, job: dict, index: int = 0) -> np.ndarray:
    return np.asarray(fetch(farm, job["outputs"][index]["key"]), dtype=np.float32) / 255


def fetch(farm, key: str) -> Image.Image:
    body = s3_client(farm.env).get_object(Bucket=BUCKET, Key=f"farm/{key}")["Body"].read()
    return Image.open(io.BytesIO(body))


def manifest(farm, job: dict) -> dict:
    key = f"farm/{job['manifest']}"
    return json.loads(s3_client(farm.env).get_object(Bucket=BUCKET, Key=key)["Body"].read())


def run(farm, **spec) -> dict:
    resp = farm.client.request("POST", "/api/v1/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    job = farm.wait(resp.json()["id"], timeout=120)
    assert job["status"] == "succeeded", job["error"]
    return job


@pytest.fixture(scope="module")
def gradient() -> Image.Image:
    x = np.linspace(0, 255, 80, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (48, 1)), np.tile(x[:48, None], (1, 80)), np.full((48, 80), 90)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def test_img2img_starts_from_the_init_image(farm, gradient):
    init = png_b64(gradient)
    light = run(farm, kind="img2img", prompt="p", init_image=init, denoising_strength=0.05, **TINY)
    heavy = run(farm, kind="img2img", prompt="p", init_image=init, denoising_strength=1.0, **TINY)
    flipped = png_b64(gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    other = run(
        farm, kind="img2img", prompt="p", init_image=flipped, denoising_strength=0.05, **TINY
    )
    # The demo VAE has random weights, so the output does not resemble the input; what a
    # user can still check is that the init image and the strength both decide the result.
    assert np.abs(pixels(farm, light) - pixels(farm, other)).mean() > 0.01
    assert np.abs(pixels(farm, light) - pixels(farm, heavy)).mean() > 0.01
    again = run(farm, kind="img2img", prompt="p", init_image=init, denoising_strength=0.05, **TINY)
    assert np.array_equal(pixels(farm, light), pixels(farm, again))
    # The input was stored once, content-addressed, and the record names it.
    assert light["spec"]["init_image"] == heavy["spec"]["init_image"]
    assert light["spec"]["init_image"].startswith("inputs/")
    assert fetch(farm, light["spec"]["init_image"]).size == (80, 48)
    assert manifest(farm, light)["passes"] == ["StableDiffusionImg2ImgPipeline"]


def stored_input(farm, raw: bytes) -> tuple[str, bytes]:
    """Submit an img2img job with `raw` as its init image; the key the farm stored it under,
    and the stored bytes. No GPU worker: the job waits, and is canceled at once."""
    image = base64.b64encode(raw).decode()
    spec = {**TINY, "kind": "img2img", "prompt": "p", "init_image": image, "hardware": "gpu"}
    resp = farm.client.request("POST", "/api/v1/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    farm.client.cancel(resp.json()["id"])
    key = resp.json()["spec"]["init_image"]
    return key, s3_client(farm.env).get_object(Bucket=BUCKET, Key=f"farm/{key}")["Body"].read()


def test_an_input_png_is_stored_as_sent_and_a_jpeg_as_a_png_of_its_pixels(farm, gradient):
    # Not PIL's default compression: an input decoded and encoded again would differ.
    png = encoded(gradient, "PNG", compress_level=1)
    key, body = stored_input(farm, png)
    assert body == png and key == f"inputs/{hashlib.sha256(png).hexdigest()}.png"
    jpeg = encoded(gradient, "JPEG", quality=90)
    as_stored = Image.open(io.BytesIO(stored_input(farm, jpeg)[1]))
    assert as_stored.format == "PNG"
    assert np.array_equal(np.asarray(as_stored), np.asarray(Image.open(io.BytesIO(jpeg))))


def test_a_jobs_input_images_are_served_by_their_field(farm, gradient):
    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    init = encoded(gradient, "PNG", compress_level=1)
    mask = encoded(Image.new("L", gradient.size, 255), "PNG")
    hint = encoded(ImageOps.mirror(gradient), "PNG")
    unit = {"model": "demo-controlnet-sd15", "image": b64(hint)}
    spec = {**TINY, "prompt": "p", "hardware": "gpu"}  # no GPU worker: they wait
    images = {"init_image": b64(init), "mask": b64(mask), "controlnet": [unit]}
    job = farm.submit(kind="img2img", **images, **spec)
    plain = farm.submit(**spec)
    try:
        inputs = farm.job(job["id"])["inputs"]
        assert [i["field"] for i in inputs] == ["init_image", "mask", "controlnet.0.image"]
        with farm.as_account("inputs-viewer", "viewer") as viewer:
            for item, sent in zip(inputs, (init, mask, hint), strict=True):
                assert item["key"] == f"inputs/{hashlib.sha256(sent).hexdigest()}.png"
                assert viewer.input(job["id"], item["field"]) == sent
            resp = viewer.request("GET", inputs[0]["url"])
            assert resp.headers["Content-Type"] == "image/png" and resp.content == init
            with pytest.raises(ApiError) as missing:
                viewer.input(job["id"], "controlnet.1.image")
            assert missing.value.status == 404
            assert "its inputs: init_image, mask, controlnet.0.image" in missing.value.body["error"]
        assert requests.get(farm.url + inputs[0]["url"], timeout=10).status_code == 401
        assert farm.job(plain["id"])["inputs"] == []
    finally:
        for made in (job, plain):
            farm.client.cancel(made["id"])


def test_a_photo_is_stored_upright_and_a_cmyk_jpeg_as_rgb(farm, gradient):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; shown rotated 90 degrees
    rotated = encoded(gradient, "JPEG", quality=90, exif=exif.tobytes())
    cmyk = encoded(gradient.convert("CMYK"), "JPEG", quality=90)  # no PNG holds CMYK
    for name, raw in (("rotated", rotated), ("cmyk", cmyk)):
        stored = Image.open(io.BytesIO(stored_input(farm, raw)[1]))
        sent = ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB")
        assert (stored.format, stored.mode) == ("PNG", "RGB"), name
        assert np.array_equal(np.asarray(stored), np.asarray(sent)), name
    assert Image.open(io.BytesIO(stored_input(farm, rotated)[1])).size == (48, 80)


@pytest.mark.parametrize("mode", ["just_resize", "crop_and_resize", "resize_and_fill"])
def test_img2img_resize_modes_give_the_requested_size(farm, gradient, mode):
    job = run(
        farm,
        kind="img2img",
        prompt="p",
        init_image=png_b64(gradient),
        resize_mode=mode,
        **{**TINY, "width": 96, "height": 64},
    )
    assert fetch(farm, job["outputs"][0]["key"]).size == (96, 64)


def test_inpainting_repaints_only_the_mask(farm, gradient):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    init = gradient.resize((64, 64))
    job = run(
        farm,
        kind="img2img",
        prompt="p",
        init_image=png_b64(init),
        mask=png_b64(mask),
        mask_blur=0,
        denoising_strength=1.0,
        **TINY,
    )
    diff = np.abs(pixels(farm, job) - np.asarray(init, dtype=np.float32) / 255).mean(-1)
    inside = np.asarray(mask) == 255
    assert diff[~inside].max() <= 1 / 255 + 1e-6, "outside the mask nothing changes"
    assert diff[inside].mean() > 0.05, "inside the mask it is repainted"
    assert manifest(farm, job)["passes"] == ["StableDiffusionInpaintPipeline"]
    assert "Mask blur: 0" in fetch(farm, job["outputs"][0]["key"]).text["parameters"]


def test_hires_fix_pass_two_is_img2img_on_pass_one(farm):
    hires = {"scale": 2, "steps": 3, "denoising_strength": 0.3}
    job = run(farm, prompt="hires", hires=hires, **TINY)
    out = fetch(farm, job["outputs"][0]["key"])
    assert out.size == (128, 128)
    assert manifest(farm, job)["passes"] == [
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
    ]
    assert "Hires upscale: 2, Hires steps: 3, Hires upscaler: Latent" in out.text["parameters"]
    # The final image depends on pass 1: change only pass 1 (its steps) and it changes.
    other = run(farm, prompt="hires", hires=hires, **{**TINY, "steps": 6})
    assert np.abs(pixels(farm, job) - pixels(farm, other)).mean() > 0.01


def test_hires_fix_with_an_upscaler_model(farm):
    job = run(farm, prompt="hires", hires={"scale": 1.5, "upscaler": "demo-esrgan-x4"}, **TINY)
    assert fetch(farm, job["outputs"][0]["key"]).size == (96, 96)
    assert manifest(farm, job)["passes"][1] == "StableDiffusionImg2ImgPipeline"


@pytest.mark.parametrize(
    ("upscaler", "size"),
    [("demo-esrgan-x4", (70, 50)), ("demo-realesrgan-x2", (33, 47)), ("demo-aura-sr", (40, 24))],
)
def test_upscale_every_family_to_an_exact_size(farm, gradient, upscaler, size):
    image = png_b64(gradient.resize(size))
    by_scale = run(farm, kind="upscale", image=image, upscaler=upscaler, scale=2.5, tile=32)
    assert fetch(farm, by_scale["outputs"][0]["key"]).size == (
        round(size[0] * 2.5),
        round(size[1] * 2.5),
    )
    exact = run(
        farm,
        kind="upscale",
        image=image,
        upscaler=upscaler,
        width=123,
        height=77,
        unload_after=True,
    )
    out = fetch(farm, exact["outputs"][0]["key"])
    assert out.size == (123, 77)
    assert out.text["parameters"] == f"Upscaler: {upscaler}, Size: 123x77"


def test_controlnet_units(farm, gradient):
    unit = {"model": "demo-controlnet-sd15", "image": png_b64(gradient)}
    one = run(farm, prompt="cn", controlnet=[unit], **TINY)
    assert manifest(farm, one)["passes"] == ["StableDiffusionControlNetPipeline"]
    two = run(
        farm,
        prompt="cn",
        **TINY,
        controlnet=[
            unit,
            {**unit, "conditioning_scale": 0.5, "guidance_start": 0.2, "guidance_end": 0.8},
        ],
    )
    plain = run(farm, prompt="cn", **TINY)
    assert np.abs(pixels(farm, one) - pixels(farm, plain)).mean() > 0.001, "the unit has effect"
    assert (
        'ControlNet 1: "Model: demo-controlnet-sd15, Weight: 0.5, Guidance Start: 0.2'
        in (fetch(farm, two["outputs"][0]["key"]).text["parameters"])
    )


def test_sdxl_with_vae_override_batches_and_counts(farm):
    job = run(
        farm,
        prompt="xl",
        vae="demo-vae-sdxl",
        batch_size=2,
        batch_count=2,
        sampler="DPM++ 2M",
        **{**TINY, "model": "demo-sdxl"},
    )
    assert job["seeds"] == [11, 12, 13, 14]
    assert len(job["outputs"]) == 4
    assert manifest(farm, job)["passes"] == ["StableDiffusionXLPipeline"]
    last = fetch(farm, job["outputs"][3]["key"])
    assert (
        "Seed: 14," in last.text["parameters"] and "VAE: demo-vae-sdxl" in last.text["parameters"]
    )
    own = run(farm, prompt="xl", sampler="DPM++ 2M", **{**TINY, "model": "demo-sdxl"})
    assert not np.array_equal(pixels(farm, job), pixels(farm, own)), "the override VAE was used"


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({"vae": "no-vae"}, "vae", "unknown vae 'no-vae'"),
        (
            {
                "controlnet": [
                    {"model": "demo-controlnet-sd15", "image": "inputs/" + "0" * 64 + ".png"}
                ]
            },
            "controlnet.0.image",
            "no stored input",
        ),
        ({"hires": {"upscaler": "nope"}}, "hires.upscaler", "unknown upscaler 'nope'"),
        (
            {"kind": "img2img", "init_image": "bm90IGFuIGltYWdl"},
            "init_image",
            "not a readable image",
        ),
        (  # a format Pillow reads, but not one the farm takes
            {
                "kind": "img2img",
                "init_image": base64.b64encode(encoded(Image.new("RGB", (8, 8)), "TIFF")).decode(),
            },
            "init_image",
            "not a readable image (PNG, JPEG or WebP)",
        ),
        (
            {"kind": "upscale", "image": "inputs/x.png", "upscaler": "demo-esrgan-x4"},
            "image",
            "base64",
        ),
        ({"kind": "upscale", "upscaler": "demo-esrgan-x4", "width": 100}, "", "either scale"),
    ],
)
def test_bad_inputs_of_the_new_kinds_are_refused(farm, spec, field, reason):
    before = farm.redis.zcard("rf:jobs")
    spec = {**TINY, "prompt": "p", **spec}
    if spec.get("kind") == "upscale":
        spec = {k: v for k, v in spec.items() if k not in TINY and k != "prompt"}
        spec.setdefault("image", png_b64(Image.new("RGB", (8, 8))))
    resp = farm.client.request("POST", "/api/v1/jobs", json=spec)
    assert resp.status_code == 422, resp.text
    errors = {e["field"]: e["reason"] for e in resp.json()["errors"]}
    assert any(f.startswith(field) and reason in r for f, r in errors.items()), errors
    assert farm.redis.zcard("rf:jobs") == before
