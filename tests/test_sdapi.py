"""The SD-WebUI API (/sdapi/v1) driven by the real `webuiapi` package against a running farm."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest  # noqa: F401
import requests
import webuiapi
from PIL import Image, ImageOps

from tests.conftest import BUCKET, s3_client
from tests.signin import ensure_account

PASSWORD = "sdapi-password-1"
TINY = {"width": 64, "height": 64, "steps": 3}


def account(farm, name: str, role: str = "member") -> tuple[str, str]:
    ensure_account(farm.redis, name, role).set_password(name, PASSWORD)
    return name, PASSWORD


def client(farm, name: str) -> webuiapi.WebUIApi:
    api = webuiapi.WebUIApi(baseurl=f"{farm.url}/sdapi/v1", sampler="Euler a", steps=3)
    api.set_auth(*account(farm, name))
    api.util_set_model("demo-sd15")
    return api


@pytest.fixture(scope="module")
def api(farm) -> webuiapi.WebUIApi:
    return client(farm, "sd-alice")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def png_b64(size=(64, 64), color=(200, 40, 40)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_txt2img_same_seed_same_pixels_with_infotext_and_info(api):
    first = api.txt2img(prompt="a red lighthouse", negative_prompt="fog", seed=1234, **TINY)
    again = api.txt2img(prompt="a red lighthouse", negative_prompt="fog", seed=1234, **TINY)
    other = api.txt2img(prompt="a red lighthouse", negative_prompt="fog", seed=1235, **TINY)
    assert first.image.size == (64, 64)
    assert np.array_equal(pixels(first.image), pixels(again.image))
    assert not np.array_equal(pixels(first.image), pixels(other.image))
    # info is a JSON string (webuiapi parsed it), with every key clients read.
    info = first.info
    for key in [
        "prompt",
        "all_prompts",
        "negative_prompt",
        "seed",
        "all_seeds",
        "subseed",
        "all_subseeds",
        "width",
        "height",
        "sampler_name",
        "cfg_scale",
        "steps",
        "batch_size",
        "sd_model_name",
        "sd_model_hash",
        "sd_vae_name",
        "denoising_strength",
        "infotexts",
        "index_of_first_image",
        "job_timestamp",
        "version",
    ]:
        assert key in info, key
    assert info["seed"] == 1234 and info["all_seeds"] == [1234]
    assert info["sd_model_name"] == "demo-sd15" and info["sampler_name"] == "Euler a"
    text = first.image.info["parameters"]
    assert text.startswith("a red lighthouse\nNegative prompt: fog\n")
    assert "Seed: 1234" in text and info["infotexts"] == [text]
    assert first.parameters["seed"] == 1234 and first.parameters["prompt"] == "a red lighthouse"


def test_batch_size_and_n_iter_continue_the_seeds(api):
    result = api.txt2img(prompt="boats", seed=10, batch_size=2, n_iter=2, **TINY)
    assert len(result.images) == 4
    assert result.info["all_seeds"] == [10, 11, 12, 13]
    assert result.info["batch_size"] == 2
    assert [im.info["parameters"].split("Seed: ")[1].split(",")[0] for im in result.images] == [
        "10",
        "11",
        "12",
        "13",
    ]


def test_hires_fix_renders_the_scaled_size(api):
    result = api.txt2img(
        prompt="a castle", seed=5, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, **TINY
    )
    assert result.image.size == (96, 96)
    assert "Hires upscale: 1.5" in result.image.info["parameters"]
    # SD-WebUI's spelling, and what a client copies back from it is accepted in any case.
    assert "Hires upscaler: Latent," in result.image.info["parameters"]
    lower = api.txt2img(
        prompt="a castle", seed=5, enable_hr=True, hr_scale=1.5, hr_upscaler="latent", **TINY
    )
    assert lower.image.size == (96, 96)
    model = api.txt2img(
        prompt="a castle", seed=5, enable_hr=True, hr_scale=1.5, hr_upscaler="DEMO-ESRGAN-X4",
        **TINY,
    )  # fmt: skip
    assert "Hires upscaler: demo-esrgan-x4," in model.image.info["parameters"]
    sized = api.txt2img(prompt="a castle", seed=5, enable_hr=True, hr_resize_x=128, **TINY)
    assert sized.image.size == (128, 128)


def test_img2img_and_inpainting(api):
    init = Image.new("RGB", (64, 64), (30, 120, 200))
    result = api.img2img(
        images=[init], prompt="a blue wall", seed=3, denoising_strength=0.5, **TINY
    )
    assert result.image.size == (64, 64)
    assert "Denoising strength: 0.5" in result.image.info["parameters"]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpainted = api.img2img(
        images=[init], mask_image=mask, prompt="a window", seed=3, mask_blur=2, **TINY
    )
    assert inpainted.image.size == (64, 64)
    assert inpainted.info["is_using_inpainting_conditioning"] is True
    # Outside the mask the init image is kept.
    corner = pixels(inpainted.image)[:8, :8].astype(int)
    assert np.abs(corner - np.array([30, 120, 200])).max() < 40


def test_extra_single_and_batch_images(api):
    image = Image.new("RGB", (32, 32), (10, 200, 10))
    up = api.extra_single_image(image, upscaler_1="demo-esrgan-x4", upscaling_resize=2)
    assert up.image.size == (64, 64)
    resized = api.extra_single_image(image, upscaler_1="Lanczos", upscaling_resize=3)
    assert resized.image.size == (96, 96)
    batch = api.extra_batch_images(
        [image, image], upscaler_1="demo-esrgan-x4", resize_mode=1,
        upscaling_resize_w=48, upscaling_resize_h=40,
    )  # fmt: skip
    assert [im.size for im in batch.images] == [(48, 40), (48, 40)]


def test_a_resized_photo_comes_back_upright(farm, api):
    exif, buf = Image.Exif(), io.BytesIO()
    exif[0x0112] = 6  # Orientation: shown rotated 90 degrees
    Image.new("RGB", (40, 24), (10, 200, 10)).save(buf, format="JPEG", exif=exif.tobytes())
    body = {"image": base64.b64encode(buf.getvalue()).decode(), "upscaler_1": "Lanczos",
            "upscaling_resize": 2}  # fmt: skip
    resp = requests.post(
        f"{farm.url}/sdapi/v1/extra-single-image", json=body, auth=("sd-alice", PASSWORD),
        timeout=60,
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    assert Image.open(io.BytesIO(base64.b64decode(resp.json()["image"]))).size == (48, 80)


def test_png_info_round_trip(api):
    made = api.txt2img(prompt="a cat on a mat", negative_prompt="dog", seed=77, **TINY)
    read = api.png_info(made.image)
    assert read.info == made.image.info["parameters"]
    params = read.json["parameters"]
    assert params["Prompt"] == "a cat on a mat" and params["Negative prompt"] == "dog"
    assert params["Seed"] == 77 and params["Steps"] == 3
    assert params["Size-1"] == 64 and params["Size-2"] == 64


def test_set_and_get_model_are_the_callers_own(farm, api):
    models = api.get_sd_models()
    titles = {m["model_name"]: m["title"] for m in models}
    assert titles["demo-sd15"].startswith("demo-sd15 [")
    assert api.util_get_current_model() == titles["demo-sd15"]
    bob = client(farm, "sd-bob")
    bob.set_options({"sd_model_checkpoint": titles["demo-sdxl"]})
    assert bob.util_get_current_model() == titles["demo-sdxl"]
    assert api.util_get_current_model() == titles["demo-sd15"]  # alice's is unchanged
    # webuiapi returns the answer's JSON as it is: a 422 naming the option.
    refused = api.set_options({"sd_model_checkpoint": "no-such-model [0123456789]"})
    assert refused["detail"][0]["loc"] == ["body", "sd_model_checkpoint"]
    assert api.util_get_current_model() == titles["demo-sd15"]


def _long_job(api, outcome: dict) -> None:
    try:
        outcome["result"] = api.txt2img(prompt="slow", seed=1, width=256, height=256, steps=150)
    except RuntimeError as exc:
        outcome["error"] = exc.args


def test_progress_while_a_job_runs_then_interrupt_returns_the_call(farm):
    """Interrupt stops what the caller's SD-WebUI calls wait for, and only that: its REST
    jobs (an overnight batch, say) are no business of SillyTavern's interrupt, sent when a
    browser tab closes; nor are they in its progress."""
    api = client(farm, "sd-carol")
    other = client(farm, "sd-dave")
    overnight = farm.as_account("sd-carol").submit(
        {"model": "demo-sd15", "prompt": "for later", "width": 64, "height": 64,
         "steps": 2, "hardware": "gpu"}  # no gpu worker here: it stays queued
    )  # fmt: skip
    outcome: dict = {}
    worker = threading.Thread(target=_long_job, args=(api, outcome))
    worker.start()
    deadline = time.monotonic() + 60
    seen = None
    while time.monotonic() < deadline:
        seen = api.get_progress()
        if seen["progress"] > 0:
            break
        time.sleep(0.1)
    assert seen and seen["progress"] > 0 and seen["state"]["job_count"] == 1
    assert seen["state"]["sampling_steps"] == 150 and "current_image" in seen
    # Someone else's progress is their own: idle.
    idle = other.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    other.interrupt()  # cancels nothing of carol's
    assert api.get_progress()["state"]["job_count"] == 1
    api.interrupt()
    worker.join(30)
    assert not worker.is_alive()
    assert "result" not in outcome
    assert outcome["error"][0] == 409 and "canceled" in outcome["error"][1]
    api.util_wait_for_ready(check_interval=0.2)
    assert farm.job(overnight["id"])["status"] == "queued", "interrupt reached a REST job"
    farm.client.cancel(overnight["id"])


def test_lists(api):
    assert {"Euler a", "DPM++ 2M"} <= {s["name"] for s in api.get_samplers()}
    assert {"automatic", "karras"} <= {s["name"] for s in api.get_schedulers()}
    names = [u["name"] for u in api.get_upscalers()]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and "demo-esrgan-x4" in names
    assert api.get_latent_upscale_modes() == [{"name": "Latent"}]
    assert {"demo-vae-sd15"} <= {v["model_name"] for v in api.get_sd_vae()}
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert api.get_loras() == []
    assert "loaded" in api.get_embeddings()
    assert api.get_memory()["ram"]["total"] > 0
    flags = api.get_cmd_flags()
    assert flags["api_auth"] is None and PASSWORD not in str(flags)
    api.refresh_checkpoints()


def test_sampler_aliases_as_sd_webui_accepts_them(api):
    euler_a = next(s for s in api.get_samplers() if s["name"] == "Euler a")
    assert "k_euler_a" in euler_a["aliases"]
    result = api.txt2img(prompt="an alias", seed=3, sampler_name="k_euler_a", **TINY)
    assert "Sampler: Euler a," in result.image.info["parameters"]


def test_automatic_is_the_samplers_own_scheduler_as_in_sd_webui(api):
    """SD-WebUI >= 1.9 lists each sampler's default scheduler and uses it for "automatic"
    (the scheduler every client sends unless told otherwise): DPM++ 2M is Karras there."""
    options = {s["name"]: s["options"] for s in api.get_samplers()}
    assert options["DPM++ 2M"] == {"scheduler": "karras"} and options["LMS"] == {}
    assert options["DPM++ 2M SDE"] == {"scheduler": "exponential"}
    for sampler, scheduler, used in [
        ("DPM++ 2M", "automatic", "DPM++ 2M Karras"),
        ("DPM++ 2M", "uniform", "DPM++ 2M"),
        ("DPM++ 2M", "karras", "DPM++ 2M Karras"),
        ("LMS", "automatic", "LMS"),
        ("DPM++ 2M SDE", "automatic", "DPM++ 2M SDE Exponential"),
        ("k_dpmpp_2m_sde_exp", "automatic", "DPM++ 2M SDE Exponential"),
    ]:
        result = api.txt2img(prompt="x", seed=5, sampler_name=sampler, scheduler=scheduler, **TINY)
        params = result.image.info["parameters"]
        assert f"Sampler: {used}," in params, (sampler, scheduler)
        # Named alone, DPM++ 2M would be read back as Karras: the infotext says it was not.
        assert ("Schedule type: Uniform" in params) == (used == "DPM++ 2M"), params


def test_errors_in_sd_webui_shapes(farm, api):
    base = f"{farm.url}/sdapi/v1"
    auth = ("sd-alice", PASSWORD)
    wrong = requests.get(f"{base}/options", auth=("sd-alice", "not the password"), timeout=10)
    assert wrong.status_code == 401 and "detail" in wrong.json()
    cases = [
        ({"prompt": "x", "sampler_name": "Nope"}, ["body", "sampler_name"]),
        ({"prompt": "x", "scheduler": "polyexponential"}, ["body", "scheduler"]),
        ({"prompt": "x", "restore_faces": True}, ["body", "restore_faces"]),
        ({"prompt": "x", "width": 63}, ["body", "width"]),
        ({"prompt": "x", "steps": "2.5"}, ["body", "steps"]),
        ({"prompt": "x", "script_name": "x/y/z plot"}, ["body", "script_name"]),
        (
            {"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": [True, {}]}}},
            ["body", "alwayson_scripts", "ADetailer"],
        ),
        ({"prompt": "x", "override_settings": {"sd_vae": "nope"}}, None),
    ]
    for body, loc in cases:
        resp = requests.post(f"{base}/txt2img", json=body, auth=auth, timeout=30)
        assert resp.status_code == 422, (body, resp.text)
        detail = resp.json()["detail"]
        assert {"loc", "msg", "type"} <= detail[0].keys()
        if loc:
            assert detail[0]["loc"] == loc, detail
    bad = requests.post(f"{base}/txt2img", data="{not json", auth=auth, timeout=10,
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert bad.status_code == 422 and "detail" in bad.json()
    missing = requests.get(f"{base}/no-such-endpoint", auth=auth, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    img = requests.post(f"{base}/img2img", json={"prompt": "x"}, auth=auth, timeout=10)
    assert img.status_code == 422 and img.json()["detail"][0]["loc"] == ["body", "init_images"]
    # Nulls ignored, integral floats accepted, legacy combined sampler names, data: prefixes.
    ok = requests.post(
        f"{base}/img2img",
        json={
            "prompt": "x", "steps": 3.0, "width": 64, "height": 64, "seed": 9,
            "denoising_strength": None, "sampler_index": "DPM++ 2M Karras", "cfg_scale": None,
            "init_images": ["data:image/png;base64," + png_b64()], "unknown_field": 1,
        },
        auth=auth, timeout=120,
    )  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert (
        "Sampler: DPM++ 2M Karras"
        in Image.open(io.BytesIO(base64.b64decode(ok.json()["images"][0]))).info["parameters"]
    )


def test_a_refusal_says_the_validators_words_as_sd_webui_does(farm, api):
    """SD-WebUI's pydantic v1 says a validator's message as it was raised; pydantic v2 puts
    "Value error, " before it, which the REST API leaves out and so does /sdapi/v1."""
    resp = requests.post(
        f"{farm.url}/sdapi/v1/txt2img",
        json={"prompt": "x", "width": 63, "steps": 151},
        auth=("sd-alice", PASSWORD),
        timeout=30,
    )
    assert resp.status_code == 422, resp.text
    said = {tuple(e["loc"]): e["msg"] for e in resp.json()["detail"]}
    assert said == {
        ("body", "width"): "must be a multiple of 8",
        ("body", "steps"): "must be at most 150",
    }, said


def huge_png(side: int) -> bytes:
    """A valid all-black greyscale PNG of side x side pixels, a few hundred KiB: compressed row
    by row, so the test never holds the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    deflate, row = zlib.compressobj(9), bytes(side + 1)  # filter byte 0, then the pixels
    idat = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_a_mask_to_invert_larger_than_any_input_is_refused_for_its_size(farm, api):
    """196 MP: the inverted mask is made here, so it is checked against the farm's input
    limit first (it was decoded unchecked, and Pillow's own bomb guard said "not readable")."""
    body = {
        **TINY, "prompt": "x", "init_images": [png_b64()], "inpainting_mask_invert": 1,
        "mask": base64.b64encode(huge_png(14_000)).decode(),
    }  # fmt: skip
    resp = requests.post(
        f"{farm.url}/sdapi/v1/img2img", json=body, auth=("sd-alice", PASSWORD), timeout=60
    )
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"][0]
    assert detail["loc"] == ["body", "mask"] and "MP limit for input images" in detail["msg"]


def test_an_inverted_mask_is_stored_upright_like_its_init_image(farm, api):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown rotated 90 degrees
    mask, buf = Image.new("L", (80, 48), 0), io.BytesIO()
    mask.paste(255, (0, 0, 20, 48))
    mask.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    body = {
        **TINY, "prompt": "an upright mask", "init_images": [png_b64((48, 80))],
        "mask": base64.b64encode(buf.getvalue()).decode(), "inpainting_mask_invert": 1,
    }  # fmt: skip
    resp = requests.post(
        f"{farm.url}/sdapi/v1/img2img", json=body, auth=("sd-alice", PASSWORD), timeout=120
    )
    assert resp.status_code == 200, resp.text
    job = next(j for j in farm.client.jobs(limit=20) if j["spec"]["prompt"] == "an upright mask")
    key = f"farm/{job['spec']['mask']}"
    stored = s3_client(farm.env).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    sent = ImageOps.invert(ImageOps.exif_transpose(Image.open(buf)).convert("L"))
    assert Image.open(io.BytesIO(stored)).size == (48, 80)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), np.asarray(sent))


def test_generation_jobs_are_ordinary_jobs_of_the_caller(farm, api):
    api.txt2img(prompt="visible in the dashboard", seed=4, **TINY)
    jobs = farm.client.jobs(limit=20)
    mine = [j for j in jobs if j["spec"].get("prompt") == "visible in the dashboard"]
    assert mine and mine[0]["owner"] == "sd-alice" and mine[0]["status"] == "succeeded"
    audit = farm.client.request("GET", "/api/v1/audit", params={"target": mine[0]["id"]})
    [entry] = audit.json()["entries"]
    assert (entry["actor"], entry["action"], entry["detail"]) == ("sd-alice", "job.submit", "sdapi")


def _b64_png(size: tuple[int, int] = (16, 16)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_a_batch_call_queues_all_its_jobs_or_none(farm):
    name, password = account(farm, "sd-quota")
    ensure_account(farm.redis, name).set_limits(name, max_queued=1)
    worker = farm.cpu_worker()
    farm.client.drain(worker)  # the first job stays queued
    try:
        body = {
            "imageList": [{"data": _b64_png(), "name": f"{i}.png"} for i in range(2)],
            "upscaler_1": "demo-esrgan-x4",
            "upscaling_resize": 2,
        }
        resp = requests.post(
            f"{farm.url}/sdapi/v1/extra-batch-images", json=body, auth=(name, password),
            timeout=30,
        )  # fmt: skip
        assert resp.status_code == 429, resp.text
        mine = [j for j in farm.client.jobs(200) if j["owner"] == name]
        assert mine and {j["status"] for j in mine} == {"canceled"}, "nothing left to run"
    finally:
        farm.client.drain(worker, draining=False)


def test_a_batch_call_is_bounded_in_images(farm):
    name, password = account(farm, "sd-many")
    body = {"imageList": [{"data": _b64_png(), "name": "x.png"}] * 101, "upscaler_1": "None"}
    resp = requests.post(
        f"{farm.url}/sdapi/v1/extra-batch-images", json=body, auth=(name, password), timeout=30
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "imageList"]
    assert "at most 100 images" in resp.json()["detail"][0]["msg"]
