"""The job spec refuses what cannot run, with the field and the reason."""

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.jobspec import (
    MAX_SEED,
    Txt2ImgSpec,
    UpscaleSpec,
    field_errors,
    load_spec,
    parse_spec,
)
from shared.samplers import SAMPLERS

FARM = Settings()


def errors_for(**spec) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse_spec({"model": "demo-sd15", "prompt": "a cat", **spec}, FARM)
    return {e["field"]: e["reason"] for e in field_errors(info.value)}


def test_defaults_are_sd_webui_like():
    spec = Txt2ImgSpec(model="demo-sd15", prompt="a cat")
    assert (spec.width, spec.height, spec.steps, spec.sampler) == (512, 512, 20, "Euler a")
    assert spec.kind == "txt2img" and spec.hardware == "auto"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("width", 100, "multiple of 8"),
        ("height", 8192, "between 64 and 2048"),
        ("width", 32, "between 64"),
        ("steps", 0, "greater than or equal to 1"),
        ("steps", 151, "at most 150"),
        ("sampler", "Euler z", "unknown sampler"),
        ("batch_size", 9, "at most 8"),
        ("hardware", "tpu", "'cpu', 'openvino', 'gpu' or 'auto'"),
        ("seed", MAX_SEED + 1, "less than or equal"),
        ("cfg_scale", -1, "greater than or equal to 0"),
        ("kind", "txt2vid", "'txt2img', 'img2img', 'upscale'"),
        ("unknown_field", 1, "Extra inputs are not permitted"),
    ],
)
def test_bad_field_is_named_with_reason(field, value, reason):
    errors = errors_for(**{field: value})
    assert field in errors
    assert reason in errors[field]


def test_a_hires_second_pass_is_bounded_in_steps_like_the_first():
    assert "at most 150" in errors_for(hires={"steps": 151})["hires.steps"]
    assert (
        parse_spec({"model": "m", "prompt": "p", "hires": {"steps": 150}}, FARM).hires.steps == 150
    )


def test_missing_prompt_and_model_are_named():
    with pytest.raises(ValidationError) as info:
        parse_spec({}, FARM)
    assert {e["field"] for e in field_errors(info.value)} == {"model", "prompt"}


def test_limits_come_from_the_settings_passed_in():
    small = Settings(max_width=256, max_steps=10, max_batch_size=2)
    with pytest.raises(ValidationError) as info:
        parse_spec({"model": "m", "prompt": "p", "width": 512, "steps": 11, "batch_size": 3}, small)
    errors = {e["field"]: e["reason"] for e in field_errors(info.value)}
    assert "between 64 and 256" in errors["width"]
    assert "at most 10" in errors["steps"] and "at most 2" in errors["batch_size"]
    assert parse_spec({"model": "m", "prompt": "p", "width": 512}, FARM).width == 512


def test_a_recorded_spec_loads_without_the_limits_it_was_accepted_under():
    spec = parse_spec({"model": "m", "prompt": "p", "width": 2048}, FARM)
    assert load_spec(spec.model_dump(mode="json")) == spec


def test_seed_is_chosen_when_open_and_kept_when_given():
    assert Txt2ImgSpec(model="m", prompt="p", seed=42).with_seed().seed == 42
    for open_seed in (None, -1):
        seeds = {
            Txt2ImgSpec(model="m", prompt="p", seed=open_seed).with_seed().seed for _ in range(5)
        }
        assert all(0 <= s <= MAX_SEED for s in seeds) and len(seeds) > 1


def test_batch_seeds_follow_sd_webui():
    spec = Txt2ImgSpec(model="m", prompt="p", seed=MAX_SEED, batch_size=3)
    assert spec.image_seeds() == [MAX_SEED, 0, 1]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # NumPy 2's, from KDPM2's timesteps
def test_every_sampler_is_a_diffusers_scheduler_with_its_settings_taken():
    """Built as the worker builds it (`from_config` with the sampler's settings, which
    diffusers would drop with only a warning if it did not know one), and it steps."""
    from worker.demo_models import demo_scheduler
    from worker.pipelines import make_scheduler

    base = demo_scheduler().config
    for name, (_, extra) in SAMPLERS.items():
        scheduler = make_scheduler(name, base)
        assert {k: scheduler.config[k] for k in extra} == extra, name
        scheduler.set_timesteps(4)
        assert len(scheduler.timesteps) >= 4, name


def test_kind_defaults_to_txt2img_and_picks_the_spec_class():
    assert isinstance(parse_spec({"model": "m", "prompt": "p"}, FARM), Txt2ImgSpec)
    spec = parse_spec(
        {"kind": "upscale", "image": "inputs/" + "a" * 64 + ".png", "upscaler": "u", "scale": 2},
        FARM,
    )
    assert isinstance(spec, UpscaleSpec) and spec.output_count() == 1


def test_hires_target_size_and_batch_count_seeds():
    spec = Txt2ImgSpec(
        model="m",
        prompt="p",
        width=72,
        height=64,
        hires={"scale": 1.5},
        seed=3,
        batch_size=2,
        batch_count=3,
    )
    assert spec.output_size() == (104, 96)
    assert spec.image_seeds() == [3, 4, 5, 6, 7, 8]


def test_vae_automatic_means_the_checkpoints_own():
    for value in ("automatic", "none", "", None):
        assert Txt2ImgSpec(model="m", prompt="p", vae=value).vae is None
