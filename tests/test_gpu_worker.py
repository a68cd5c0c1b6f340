"""`renderfarm worker --hardware gpu`: a clear refusal where it cannot run; on a CUDA machine,
jobs through the farm in half precision, the GPU in the heartbeat, upscales like the CPU's."""

import os
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_job_kinds import fetch, manifest, png_b64, run

CUDA = torch.cuda.is_available()
TINY = {"model": "demo-sd15", "steps": 3, "seed": 21}


def start_worker(*args: str) -> subprocess.Popen:
    # Nothing answers on port 1: a worker that got past its device check would fail later.
    env = {**os.environ, "RENDERFARM_REDIS_URL": "redis://127.0.0.1:1/0"}
    return subprocess.Popen(
        [sys.executable, "-m", "renderfarm", "worker", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# (the worker's arguments, its refusal) for the cases this machine can show
REFUSALS = [
    (args, reason)
    for args, reason, here in (
        (("--hardware", "gpu"), "a gpu worker needs a CUDA device, and torch sees none", not CUDA),
        (("--hardware", "gpu", "--device", "cuda:99"), "no CUDA device 'cuda:99' here", CUDA),
        (
            ("--hardware", "openvino", "--device", "NPU9"),
            "OpenVINO has no usable device 'NPU9' here (it sees: CPU",
            # The GPU check (deploy/gpu-check.sh) runs this file where OpenVINO is absent.
            find_spec("openvino") is not None,
        ),
        (
            ("--hardware", "cpu", "--device", "cuda:0"),
            "--device cuda:0 is for gpu (cuda:N) and openvino workers",
            True,
        ),
    )
    if here
]


def test_a_worker_refuses_a_device_it_cannot_use_with_the_reason():
    """Each case a worker of its own, all started together (each imports torch first)."""
    running = [(args, reason, start_worker(*args)) for args, reason in REFUSALS]
    for args, reason, proc in running:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err[-2000:])
        assert f"renderfarm worker: {reason}" in err, (args, err[-2000:])
        assert "Traceback" not in err, err


# -- on a real GPU ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_worker(farm):
    with farm.worker("gpu", extra=("--device", "cuda:0")) as proc:
        yield proc


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_jobs_run_on_the_gpu_worker_at_every_size(farm, gpu_worker):
    for width, height in ((64, 64), (96, 64)):
        job = run(farm, prompt="gpu", hardware="gpu", width=width, height=height, **TINY)
        assert job["worker"].startswith("gpu-")
        assert fetch(farm, job["outputs"][0]["key"]).size == (width, height)
    hires = run(
        farm, prompt="gpu hires", hardware="gpu", width=64, height=64, hires={"scale": 1.5}, **TINY
    )
    assert fetch(farm, hires["outputs"][0]["key"]).size == (96, 96)
    assert manifest(farm, hires)["passes"] == [
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
    ]
    worker = farm.beat_after(hires)
    assert worker["device"] == "cuda:0"
    assert worker["device_name"] == torch.cuda.get_device_name(0)
    _, total = torch.cuda.mem_get_info(0)
    assert worker["memory_total"] == total
    # The checkpoint runs from VRAM; the budget leaves the working reserve free.
    (model,) = [m for m in worker["models"] if m["name"] == "demo-sd15"]
    assert model["tier"] == "cuda:0" and model["size_bytes"] > 0
    assert 0 < worker["cache_budget"] < total


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_an_upscale_on_the_gpu_matches_the_cpu_worker(farm, gpu_worker):
    x = np.linspace(0, 255, 50, dtype=np.uint8)
    img = Image.fromarray(np.stack([np.tile(x[:50], (30, 1))] * 3, -1))
    spec = {"kind": "upscale", "image": png_b64(img), "upscaler": "demo-esrgan-x4", "scale": 4}
    gpu = run(farm, hardware="gpu", **spec)
    cpu = run(farm, hardware="cpu", **spec)
    a, b = (np.asarray(fetch(farm, j["outputs"][0]["key"]), dtype=float) for j in (gpu, cpu))
    assert a.shape == b.shape == (120, 200, 3)
    psnr = 10 * np.log10(255**2 / max(np.mean((a - b) ** 2), 1e-12))
    assert psnr > 30, f"float16 on the GPU vs float32 on the CPU: PSNR {psnr:.1f} dB"
