"""One real job end to end: HTTP API → Redis/Celery → CPU worker process → diffusers → S3."""

import io
import json

import numpy as np
from PIL import Image

from shared import keys
from tests.conftest import BUCKET, s3_client

TINY = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 4}


def bucket_object(farm, key: str) -> bytes:
    return s3_client(farm.env).get_object(Bucket=BUCKET, Key=f"farm/{key}")["Body"].read()


def test_txt2img_job_travels_through_every_component(farm):
    spec = {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "blurry",
        "seed": 1234,
        "sampler": "DPM++ 2M Karras",
        "width": 96,
        "height": 64,
        "steps": 5,
        "cfg_scale": 6.5,
        "model": "demo-sd15",
    }
    resp = farm.client.request("POST", "/api/v1/jobs", json=spec)
    assert resp.status_code == 202, resp.text
    submitted = resp.json()
    assert submitted["status"] == "queued"
    assert resp.headers["Location"].endswith(f"/api/v1/jobs/{submitted['id']}")

    job = farm.wait(submitted["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0
    assert job["worker"].startswith("cpu-")
    assert job["started_at"] <= job["finished_at"]
    assert [o["key"] for o in job["outputs"]] == [f"jobs/{job['id']}/1/image-0.png"]
    assert job["manifest"] == f"jobs/{job['id']}/1/manifest.json"
    assert job["attempts"] == 1 and job["priority"] == "normal"
    assert job["owner"] == job["submitted_by"] == "admin"  # the signed-in account

    # The PNG really is in the bucket, at the requested size, with SD-WebUI parameters.
    png = Image.open(io.BytesIO(bucket_object(farm, job["outputs"][0]["key"])))
    assert png.size == (96, 64)
    assert png.text["parameters"] == (
        "a lighthouse at dusk\nNegative prompt: blurry\n"
        "Steps: 5, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 96x64, "
        "Model: demo-sd15"
    )
    manifest = json.loads(bucket_object(farm, job["manifest"]))
    assert manifest["outputs"] == [o["key"] for o in job["outputs"]]
    assert manifest["seeds"] == [1234] and manifest["spec"]["prompt"] == "a lighthouse at dusk"

    # The API serves the same bytes, whatever the storage backend.
    served = farm.client.request("GET", job["outputs"][0]["url"])
    assert served.headers["Content-Type"] == "image/png"
    assert served.content == bucket_object(farm, job["outputs"][0]["key"])


def test_progress_is_reported_every_denoising_step(farm):
    job = farm.wait(farm.submit(prompt="steps", **{**TINY, "steps": 9})["id"])
    assert job["status"] == "succeeded"
    # seq counts every write to the record: created, dispatched, running, one per step,
    # succeeded.
    seq = int(farm.redis.hget(keys.job(job["id"]), "seq"))
    assert seq == 1 + 1 + 1 + 9 + 1


def test_same_seed_same_images_and_open_seed_is_recorded(farm):
    ids = [farm.submit(prompt="twins", seed=77, batch_size=2, **TINY)["id"] for _ in "ab"]
    open_seed = farm.submit(prompt="twins", batch_size=2, **TINY)
    first, second = (farm.wait(i) for i in ids)
    images = [
        [np.asarray(Image.open(io.BytesIO(bucket_object(farm, o["key"])))) for o in j["outputs"]]
        for j in (first, second)
    ]
    assert len(images[0]) == 2
    assert all(np.array_equal(a, b) for a, b in zip(*images, strict=True))
    assert not np.array_equal(images[0][0], images[0][1]), "batch images use seed, seed+1"
    assert first["seeds"] == [77, 78]

    job = farm.wait(open_seed["id"])
    seed = job["spec"]["seed"]
    assert open_seed["spec"]["seed"] == seed and job["seeds"] == [seed, seed + 1]
    png = Image.open(io.BytesIO(bucket_object(farm, job["outputs"][1]["key"])))
    assert f"Seed: {seed + 1}," in png.text["parameters"]


def test_model_that_fails_to_load_fails_the_job_and_the_worker_goes_on(farm):
    broken = farm.wait(farm.submit(prompt="x", **{**TINY, "model": "broken-model"})["id"])
    assert broken["status"] == "failed"
    assert "could not load checkpoint 'broken-model'" in broken["error"]
    assert broken["outputs"] == []
    after = farm.wait(farm.submit(prompt="still serving", **TINY)["id"])
    assert after["status"] == "succeeded"


def test_job_list_models_and_missing_things(farm):
    job = farm.wait(farm.submit(prompt="listed", **TINY)["id"])
    listed = farm.client.jobs()
    assert listed[0]["id"] == job["id"], "most recent first"
    models = farm.client.models()
    demo = next(m for m in models if m["name"] == "demo-sd15")
    assert demo["family"] == "checkpoint" and demo["kind"] == "StableDiffusionPipeline"
    assert 0 < demo["size_bytes"] < 20_000_000
    assert farm.client.request("GET", "/api/v1/jobs/nope").status_code == 404
    assert farm.client.request("GET", f"/api/v1/jobs/{job['id']}/outputs/5").status_code == 404
