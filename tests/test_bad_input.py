"""Bad input gets a 4xx naming the field and the reason, and nothing is queued or recorded."""

import base64
import io

import pytest
from PIL import Image
from redis import Redis

from dashboard.app import create_app
from tests.conftest import settings_on_db
from tests.signin import account_token

# What signing in writes (accounts, tokens, the secret key, the audit log, throttling).
AUTH_KEYS = ("rf:account", "rf:token", "rf:secret-key", "rf:audit", "rf:ratelimit")


def job_keys(redis: Redis) -> list[bytes]:
    return [k for k in redis.scan_iter() if not k.decode().startswith(AUTH_KEYS)]


def signed_in(app, redis: Redis):
    """The app's test client, sending a member's token on every request."""
    token = account_token(redis, "tester")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


@pytest.fixture
def client(redis_url, models_dir, tmp_path):
    # A database of its own and no worker: anything queued would still be sitting there.
    settings = settings_on_db(redis_url, 5, models_dir, tmp_path)
    redis = Redis.from_url(settings.redis_url)
    yield signed_in(create_app(settings), redis)
    assert not job_keys(redis), f"bad input left keys behind: {job_keys(redis)}"


GOOD = {"model": "demo-sd15", "prompt": "a cat", "width": 64, "height": 64}
LONG_NAME = "é" * 200  # the spec's most characters, but more bytes than a file name's 255


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"model": "no-such-model"}, "model", "unknown checkpoint 'no-such-model'"),
        ({"sampler": "Euler z"}, "sampler", "unknown sampler"),
        ({"width": 100}, "width", "multiple of 8"),
        ({"height": 4096}, "height", "between 64 and 2048"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"steps": 1000}, "steps", "at most 150"),
        ({"hires": {"steps": 100000}}, "hires.steps", "at most 150"),
        ({"steps": 2.5}, "steps", "fractional part"),  # only SD-WebUI fields truncate
        ({"prompt": None}, "prompt", "valid string"),
        ({"batch_size": "many"}, "batch_size", "valid integer"),
        # 200 characters, 400 bytes: longer than a file name may be (it was a 500).
        ({"model": LONG_NAME}, "model", "unknown checkpoint"),
        ({"vae": LONG_NAME}, "vae", "unknown vae"),
        ({"hires": {"upscaler": LONG_NAME}}, "hires.upscaler", "unknown upscaler"),
    ],
)
def test_bad_field(client, change, field, reason):
    resp = client.post("/api/v1/jobs", json={**GOOD, **change})
    assert resp.status_code == 422
    errors = {e["field"]: e["reason"] for e in resp.get_json()["errors"]}
    assert reason in errors[field]
    assert not errors[field].startswith("Value error"), "the library's words, not ours"


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"{not json", "not a JSON document"), (b"[1, 2]", "must be a JSON object"), (b"", "not a")],
)
def test_malformed_body(client, body, reason):
    resp = client.post("/api/v1/jobs", data=body, content_type="application/json")
    assert resp.status_code == 400
    assert reason in resp.get_json()["errors"][0]["reason"]


def test_the_app_validates_against_the_settings_it_was_created_with(
    redis_url, models_dir, tmp_path
):
    base = settings_on_db(redis_url, 5, models_dir, tmp_path)
    settings = base.model_copy(update={"max_width": 128})
    redis = Redis.from_url(settings.redis_url)
    client = signed_in(create_app(settings), redis)
    resp = client.post("/api/v1/jobs", json={**GOOD, "width": 256})
    assert resp.status_code == 422
    assert "between 64 and 128" in resp.get_json()["errors"][0]["reason"]
    assert not job_keys(redis)


SDAPI = {"prompt": "x", "width": 64, "height": 64, "steps": 2}


@pytest.mark.parametrize(
    ("change", "loc", "msg"),
    [
        ({"steps": 151}, ["steps"], "at most 150"),
        (
            {"enable_hr": True, "hr_second_pass_steps": 100000},
            ["hr_second_pass_steps"],
            "at most 150",
        ),
        ({"enable_hr": True, "hr_second_pass_steps": 151}, ["hr_second_pass_steps"], "at most 150"),
        ({"steps": "--5"}, ["steps"], "not a valid integer"),
        ({"steps": "²"}, ["steps"], "not a valid integer"),
        ({"seed": "9" * 5000}, ["seed"], "not a valid integer"),
        ({"seed": 9**80}, ["seed"], "out of range"),
        ({"cfg_scale": "inf"}, ["cfg_scale"], "finite"),
        ({"enable_hr": True, "hr_resize_x": 128, "width": 0}, ["width"], "between 64"),
        ({"enable_hr": True, "hr_resize_y": 128, "height": 0}, ["height"], "between 64"),
        ({"enable_hr": True, "hr_resize_x": -128}, ["hr_resize_x"], "0 (use hr_scale)"),
        (
            {"override_settings": {"CLIP_stop_at_last_layers": "two"}},
            ["override_settings", "CLIP_stop_at_last_layers"],
            "not a valid integer",
        ),
        (
            {"override_settings": {"CLIP_stop_at_last_layers": 2}},
            ["override_settings", "CLIP_stop_at_last_layers"],
            "only 1",
        ),
    ],
)
def test_sdapi_bad_field(client, change, loc, msg):
    """SD-WebUI's 422: the request's own field named, nothing queued."""
    resp = client.post("/sdapi/v1/txt2img", json={**SDAPI, **change})
    assert resp.status_code == 422, resp.get_data(as_text=True)
    [detail] = resp.get_json()["detail"]
    assert detail["loc"] == ["body", *loc] and msg in detail["msg"], detail


def test_sdapi_options_refuse_a_clip_skip_no_generation_could_honour(client):
    """Refused where it is set, not in every txt2img after (it answered 200, then 422s)."""
    resp = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2})
    assert resp.status_code == 422, resp.get_data(as_text=True)
    [detail] = resp.get_json()["detail"]
    assert detail["loc"] == ["body", "CLIP_stop_at_last_layers"] and "only 1" in detail["msg"]
    assert client.get("/sdapi/v1/options").get_json()["CLIP_stop_at_last_layers"] == 1
    echoed = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1.0})
    assert echoed.status_code == 200 and echoed.get_json() == {"updated": []}


@pytest.mark.parametrize(
    ("option", "msg"), [("sd_model_checkpoint", "unknown checkpoint"), ("sd_vae", "unknown VAE")]
)
def test_sdapi_options_refuse_a_model_name_too_long_for_a_file(client, option, msg):
    """A 422 naming the option, as for any unknown model (it was a 500: File name too long)."""
    resp = client.post("/sdapi/v1/options", json={option: LONG_NAME})
    assert resp.status_code == 422, resp.get_data(as_text=True)
    [detail] = resp.get_json()["detail"]
    assert detail["loc"] == ["body", option] and msg in detail["msg"], detail


def sdapi_error(resp, status: int, words: str) -> None:
    """What webuiapi and the bots read from an error: SD-WebUI's keys, the reason in them."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert {"error", "detail", "body", "errors"} <= body.keys(), body
    assert words in body["detail"] and words in body["errors"]


def test_sdapi_app_level_errors_in_sd_webui_shape(redis_url, models_dir, tmp_path):
    """The body limit's 413 and the password throttle's 429 (was {"error": ...} only)."""
    base = settings_on_db(redis_url, 5, models_dir, tmp_path)
    settings = base.model_copy(
        update={"max_request_mb": 1, "password_attempts_per_name": "2/minute"}
    )
    redis = Redis.from_url(settings.redis_url)
    app = create_app(settings)
    client = signed_in(app, redis)
    big = {"prompt": "x" * (2 << 20)}
    sdapi_error(client.post("/sdapi/v1/txt2img", json=big), 413, "RENDERFARM_MAX_REQUEST_MB")
    guesser = app.test_client()
    for _ in range(3):
        resp = guesser.get("/sdapi/v1/progress", auth=("throttled-name", "wrong"))
    sdapi_error(resp, 429, "too many failed password attempts")
    assert resp.headers["Retry-After"]
    assert not job_keys(redis)


def png_b64(size: tuple[int, int] = (64, 64)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_sdapi_names_the_controlnet_unit_the_client_sent(client):
    """The second unit is the bad one, under the key as the client spelled it (the
    disabled first unit was dropped before the index was mapped back: args.0)."""
    units = [{"enabled": False}, {"enabled": True, "model": "nope", "image": png_b64()}]
    body = {**SDAPI, "alwayson_scripts": {"controlnet": {"args": units}}}
    resp = client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    [detail] = resp.get_json()["detail"]
    assert detail["loc"] == ["body", "alwayson_scripts", "controlnet", "args", 1, "model"]
    assert "unknown controlnet 'nope'" in detail["msg"]


def test_sdapi_extras_name_the_side_that_is_zero(client):
    body = {"image": png_b64(), "resize_mode": 1, "upscaling_resize_w": 128}
    resp = client.post("/sdapi/v1/extra-single-image", json={**body, "upscaling_resize_h": 0})
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert resp.get_json()["detail"][0]["loc"] == ["body", "upscaling_resize_h"]


def test_sdapi_interrogate_says_it_is_not_available(client):
    """A clear 501 in SD-WebUI's shape (was a bare 404: "is the server an SD-WebUI?")."""
    resp = client.post("/sdapi/v1/interrogate", json={"image": png_b64(), "model": "clip"})
    sdapi_error(resp, 501, "interrogate is not available")


def test_a_controlnet_for_another_checkpoint_generation_is_refused_naming_the_unit(client):
    """An SD 1.x ControlNet on an SDXL checkpoint would only fail on the worker (a matrix
    shape error, after its wait in the queue); both APIs refuse it at once, naming the unit.
    (The demo models are that pair in miniature: widths 32 and 64.)"""
    unit = {"model": "demo-controlnet-sd15", "image": png_b64()}
    resp = client.post("/api/v1/jobs", json={**GOOD, "model": "demo-sdxl", "controlnet": [unit]})
    assert resp.status_code == 422, resp.get_data(as_text=True)
    errors = {e["field"]: e["reason"] for e in resp.get_json()["errors"]}
    assert errors == {
        "controlnet.0.model": "controlnet 'demo-controlnet-sd15' is for cross-attention width "
        "32 checkpoints; 'demo-sdxl' is cross-attention width 64"
    }

    units = [{"enabled": True, "model": "demo-controlnet-sd15", "image": png_b64()}]
    body = {
        **SDAPI,
        "override_settings": {"sd_model_checkpoint": "demo-sdxl"},
        "alwayson_scripts": {"ControlNet": {"args": units}},
    }
    resp = client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    [detail] = resp.get_json()["detail"]
    assert detail["loc"] == ["body", "alwayson_scripts", "ControlNet", "args", 0, "model"]
    assert "is for cross-attention width 32 checkpoints" in detail["msg"]
