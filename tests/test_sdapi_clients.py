"""Request sequences of real SD-WebUI clients, replayed as their sources send them:
Open WebUI (backend/open_webui/routers/images.py), SillyTavern (src/endpoints/
stable-diffusion.js, forwarding its browser payload) and the AIYA Discord bot (core/*.py)."""

from __future__ import annotations

import base64
import io

import requests
from PIL import Image

from tests.test_sdapi import PASSWORD, account


def basic(name: str) -> dict[str, str]:
    # Open WebUI and SillyTavern build the header themselves: "Basic " + base64("user:pass").
    return {"authorization": "Basic " + base64.b64encode(f"{name}:{PASSWORD}".encode()).decode()}


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_open_webui_verify_set_model_and_generate(farm):
    account(farm, "owui")
    url, headers = farm.url, basic("owui")
    # verify_url: GET options, status only.
    assert requests.get(f"{url}/sdapi/v1/options", headers=headers, timeout=10).ok
    # set_image_model: GET options, change the model, POST the whole dict back.
    options = requests.get(f"{url}/sdapi/v1/options", headers=headers, timeout=10).json()
    titles = [
        m["title"]
        for m in requests.get(f"{url}/sdapi/v1/sd-models", headers=headers, timeout=10).json()
    ]  # noqa: E501
    model = next(t for t in titles if t.startswith("demo-sd15"))
    if model != options["sd_model_checkpoint"]:
        options["sd_model_checkpoint"] = model
        posted = requests.post(f"{url}/sdapi/v1/options", json=options, headers=headers, timeout=10)
        posted.raise_for_status()
        assert posted.json() == {"updated": ["sd_model_checkpoint"]}
    # get_image_model before each generation.
    again = requests.get(f"{url}/sdapi/v1/options", headers=headers, timeout=10).json()
    assert again["sd_model_checkpoint"] == model
    # image_generations: {prompt, batch_size, width, height, steps?, negative_prompt?} + params.
    data = {"prompt": "a teapot", "batch_size": 2, "width": 64, "height": 64, "steps": 3}
    data = {**data, "negative_prompt": "blurry", "cfg_scale": 6, "sampler_name": "Euler"}
    res = requests.post(f"{url}/sdapi/v1/txt2img", json=data, headers=headers, timeout=120)
    body = res.json()  # content_type=None: it never looks at the status
    assert res.status_code == 200 and len(body["images"]) == 2
    assert isinstance(body["info"], str)  # stored as it is
    assert all(decode(b).size == (64, 64) for b in body["images"])


def test_sillytavern_lists_set_model_generate_and_interrupt(farm):
    account(farm, "tavern")
    url, headers = farm.url, basic("tavern")
    # The five lists are fetched together; one failing fails them all.
    names = {}
    for path, key in (
        ("samplers", "name"), ("schedulers", "name"), ("upscalers", "name"),
        ("latent-upscale-modes", "name"), ("sd-vae", "model_name"), ("sd-models", "title"),
    ):  # fmt: skip
        resp = requests.get(f"{url}/sdapi/v1/{path}", headers=headers, timeout=10)
        assert resp.ok, path
        names[path] = [x[key] for x in resp.json()]
    model = next(t for t in names["sd-models"] if t.startswith("demo-sd15"))
    # set-model: POST {sd_model_checkpoint}, then poll progress until idle.
    posted = requests.post(
        f"{url}/sdapi/v1/options", json={"sd_model_checkpoint": model}, headers=headers, timeout=10
    )
    assert posted.ok
    state = requests.get(f"{url}/sdapi/v1/progress", headers=headers, timeout=10).json()
    assert state["progress"] == 0.0 and state["state"]["job_count"] == 0
    # get-model
    options = requests.get(f"{url}/sdapi/v1/options", headers=headers, timeout=10).json()
    assert options["sd_model_checkpoint"] == model
    # generate: the browser's payload forwarded as it is, with its connection settings in it.
    payload = {
        "url": farm.url, "auth": f"tavern:{PASSWORD}",
        "prompt": "a tavern, warm light", "negative_prompt": "lowres",
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "steps": 3, "cfg_scale": 7,
        "width": 64, "height": 64, "restore_faces": False, "enable_hr": True,
        "hr_upscaler": "Latent", "hr_scale": 2, "hr_additional_modules": [],
        "denoising_strength": 0.7, "hr_second_pass_steps": 0, "seed": 42, "clip_skip": 1,
        "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic",
                              "forge_additional_modules": []},
        "override_settings_restore_afterwards": True,
        "save_images": True, "send_images": True, "do_not_save_grid": False,
        "do_not_save_samples": False,
    }  # fmt: skip
    res = requests.post(f"{url}/sdapi/v1/txt2img", json=payload, headers=headers, timeout=120)
    assert res.status_code == 200, res.text
    body = res.json()
    image = decode(body["images"][0])
    assert image.format == "PNG" and image.size == (128, 128)
    assert "Sampler: DPM++ 2M Karras" in image.info["parameters"]
    # The credentials it forwarded are never echoed.
    assert "auth" not in body["parameters"] and PASSWORD not in res.text
    # A scheduler sent as null is the default.
    payload.update(scheduler=None, enable_hr=False, sampler_name="Euler a")
    res = requests.post(f"{url}/sdapi/v1/txt2img", json=payload, headers=headers, timeout=120)
    assert res.status_code == 200, res.text
    # On a closed browser socket it POSTs interrupt, without a body: a JSON answer.
    stop = requests.post(f"{url}/sdapi/v1/interrupt", headers=headers, timeout=10)
    assert stop.ok and stop.json() == {}


def test_aiya_discord_bot_generate_png_info_and_upscale(farm):
    name, password = account(farm, "aiya")
    session = requests.Session()
    session.auth = (name, password)
    url = f"{farm.url}/sdapi/v1"
    assert session.get(f"{url}/cmd-flags", timeout=10).status_code == 200  # 401 = auth on
    models = session.get(f"{url}/sd-models", timeout=10).json()
    assert {"title", "model_name", "filename", "hash"} <= models[0].keys()
    model = next(m for m in models if m["model_name"] == "demo-sd15")
    session.post(f"{url}/options", json={"sd_model_checkpoint": model["title"]}, timeout=10)
    payload = {
        "prompt": "a knight", "negative_prompt": "bad hands", "steps": 4.0,
        "width": 64, "height": 64, "cfg_scale": 7.0, "sampler_index": "DPM++ 2M Karras",
        "seed": 1234, "seed_resize_from_h": -1, "seed_resize_from_w": -1,
        "denoising_strength": None, "n_iter": 1, "styles": None, "batch_size": 1,
        "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
        "hr_second_pass_steps": 2.0, "override_settings": {},
        "alwayson_scripts": {},
    }  # fmt: skip
    res = session.post(f"{url}/txt2img", json=payload, timeout=120)
    assert res.status_code == 200, res.text
    image_b64 = res.json()["images"][0]
    # It calls png-info on every image and parses the infotext's lines.
    info = session.post(
        f"{url}/png-info", json={"image": "data:image/png;base64," + image_b64}, timeout=10
    ).json()["info"]
    lines = info.split("\n")
    assert lines[0] == "a knight" and lines[1] == "Negative prompt: bad hands"
    assert "Steps: 4" in lines[2] and "Seed: 1234" in lines[2]
    # live preview reads these keys directly.
    progress = session.get(f"{url}/progress", timeout=10).json()
    assert "current_image" in progress and "eta_relative" in progress
    assert {"job", "sampling_step"} <= progress["state"].keys()
    # upscale reads "image".
    up = session.post(
        f"{url}/extra-single-image",
        json={"upscaling_resize": 2, "upscaler_1": "demo-realesrgan-x2", "image": image_b64},
        timeout=120,
    )
    assert up.status_code == 200, up.text
    assert decode(up.json()["image"]).size == (192, 192)


def test_aiya_default_style_same_size_hires_and_half_steps_are_accepted(farm):
    """AIYA's request as core/stablecog.py builds it with its defaults: style "None",
    hires at scale 1, a second pass of int(steps) / 2 steps, CLIP skip in override_settings.
    SD-WebUI ignores an unknown style, skips a second pass at the same size and truncates
    the float; so does the farm."""
    name, password = account(farm, "aiya-defaults")
    url, steps = f"{farm.url}/sdapi/v1", 3
    payload = {
        "prompt": "a castle", "negative_prompt": "", "steps": steps, "width": 64, "height": 64,
        "cfg_scale": 7.0, "sampler_index": "Euler a", "seed": 77, "seed_resize_from_h": 0,
        "seed_resize_from_w": 0, "denoising_strength": 0.5, "n_iter": 1,
        "styles": ["None"], "enable_hr": True, "hr_upscaler": "Latent", "hr_scale": 1,
        "hr_second_pass_steps": int(steps) / 2,
        "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_model_checkpoint": "demo-sd15"},
    }  # fmt: skip
    res = requests.post(f"{url}/txt2img", json=payload, auth=(name, password), timeout=120)
    assert res.status_code == 200, res.text
    image = decode(res.json()["images"][0])
    assert image.size == (64, 64)
    assert "Steps: 3" in image.info["parameters"] and "Seed: 77" in image.info["parameters"]
