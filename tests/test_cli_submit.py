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


def test_a_batch_count_submits_a_batch_shared_by_the_workers_and_waits_for_all(farm, tmp_path):
    tiny = ("--width", "64", "--height", "64", "--steps", "2", "--seed", "40")
    out = submit(farm, "three boats", *tiny, "--batch-count", "3", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    ids = out.stdout.split()[:3]
    jobs = [farm.client.job(job_id) for job_id in ids]
    assert len({job["batch"] for job in jobs}) == 1 and jobs[0]["batch"]
    assert farm.client.batch(jobs[0]["batch"])["status"] == "succeeded"
    assert [job["seeds"] for job in jobs] == [[40], [41], [42]]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(f"{i}-0.png" for i in ids)

    before = farm.client.find_jobs(owner="cli-user")["total"]
    for args, said in (
        (("--batch-count", "101"),
         "submit: spec.batch_count: Input should be less than or equal to 100 (422)"),
        (("--batch-count", "0"), "argument --batch-count: must be 1 or more, not 0"),
        (("--kind", "upscale", "--image", "x.png", "--upscaler", "demo-esrgan-x4", "--scale",
          "2", "--batch-count", "2"), "--batch-count is for txt2img and img2img"),
    ):  # fmt: skip
        refused = submit(farm, "many boats", *tiny, *args, tmp_path=tmp_path)
        assert refused.returncode in (1, 2) and said in refused.stderr, refused.stderr
    assert farm.client.find_jobs(owner="cli-user")["total"] == before, "nothing was submitted"


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
