"""`renderfarm submit` submits every kind and shows a live progress bar with --wait."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from tests.signin import account_token


def submit(farm, *args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RENDERFARM_TOKEN": account_token(farm.redis, "cli-user")}
    return subprocess.run(
        [sys.executable, "-m", "renderfarm", "submit", *args, "--api", farm.url,
         "--wait", "--out", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip


def test_submit_every_kind_with_a_progress_bar(farm, tmp_path):
    tiny = ("--width", "64", "--height", "64", "--steps", "3", "--seed", "7")
    hires = submit(farm, "a harbour", *tiny, "--hires-scale", "1.5", tmp_path=tmp_path)
    assert hires.returncode == 0, hires.stderr
    assert "100%" in hires.stderr and "succeeded" in hires.stderr  # the bar, on stderr
    first = next(tmp_path.glob("*.png"))
    assert Image.open(first).size == (96, 96)

    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (20, 90, 160)).save(init)
    img = submit(farm, "a wave", "--kind", "img2img", "--init-image", str(init), *tiny,
                 tmp_path=tmp_path)  # fmt: skip
    assert img.returncode == 0, img.stderr
    up = submit(farm, "--kind", "upscale", "--image", str(init), "--upscaler", "demo-esrgan-x4",
                "--scale", "2", tmp_path=tmp_path)  # fmt: skip
    assert up.returncode == 0, up.stderr
    job_id = up.stdout.split()[0]
    assert Image.open(tmp_path / f"{job_id}-0.png").size == (128, 128)


def test_an_option_of_another_kind_is_refused_not_ignored(farm, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (20, 90, 160)).save(init)
    before = farm.client.find_jobs(owner="cli-user")["total"]
    for args, said in (
        (("a wave", "--init-image", str(init)), "--init-image is for --kind img2img, not txt2img"),
        (("--kind", "upscale", "--image", str(init), "--upscaler", "demo-esrgan-x4",
          "--scale", "2", "--mask", str(init)), "--mask is for --kind img2img, not upscale"),
        (("a wave", "--kind", "img2img", "--init-image", str(init), "--hires-scale", "2"),
         "--hires-scale is for --kind txt2img, not img2img"),
    ):  # fmt: skip
        refused = submit(farm, *args, tmp_path=tmp_path)
        assert refused.returncode == 1 and said in refused.stderr, refused.stderr
    assert farm.client.find_jobs(owner="cli-user")["total"] == before, "nothing was submitted"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["submit", "x", "--priority", "urgent"], "(choose from 'high', 'normal', 'low')"),
        (["submit", "x", "--kind", "paint"], "(choose from 'txt2img', 'img2img', 'upscale')"),
        (["priority", "some-job", "urgent"], "(choose from 'high', 'normal', 'low')"),
        (["worker", "--hardware", "tpu"], "(choose from 'cpu', 'openvino', 'gpu')"),
        (["up", "--workers", "tpu"], "(choose from 'cpu', 'openvino', 'gpu')"),
    ],
)
def test_a_wrong_choice_is_answered_with_the_words_to_type(args, said, tmp_path):
    """argparse names an enum's members by repr (<Priority.HIGH: 'high'>): the operator
    is told the words the command takes instead."""
    out = subprocess.run(
        [sys.executable, "-m", "renderfarm", *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert said in out.stderr and "<" not in out.stderr.splitlines()[-1], out.stderr
