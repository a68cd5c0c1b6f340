"""Every request does bounded work: each bound refused at submission with a 4xx naming the
field, and nothing recorded or queued (so no worker ever receives such a job); quotas per
account. Against the real dashboard process."""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from shared import keys
from tests.signin import ensure_account

TINY = {"model": "demo-sd15", "prompt": "p", "width": 64, "height": 64, "steps": 2}


def png(width: int, height: int, mode: str = "RGB") -> str:
    """A flat image: a large one compresses to a few kilobytes."""
    buf = io.BytesIO()
    Image.new(mode, (width, height), 128 if mode != "1" else 1).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def big_image() -> str:
    return png(2048, 2048)


def refused(farm, body: dict, status: int, field: str, reason: str, path="/api/v1/jobs"):
    before = farm.redis.zcard(keys.jobs_index())
    resp = farm.client.request("POST", path, json=body)
    assert resp.status_code == status, resp.text
    errors = {e["field"]: e["reason"] for e in resp.json()["errors"]}
    assert reason in errors[field], errors
    assert farm.redis.zcard(keys.jobs_index()) == before, "a refused job was recorded"


def test_an_upscale_by_scale_is_bounded_by_its_output(farm, big_image):
    body = {"kind": "upscale", "image": big_image, "upscaler": "demo-esrgan-x4", "scale": 16}
    refused(farm, body, 422, "scale", "2048x2048 upscaled to 32768x32768 (1073.7 MP)")


def test_a_decompression_bomb_is_refused_by_its_header(farm):
    bomb = png(8000, 8000, "1")
    assert len(bomb) < 64_000  # tens of kilobytes on the wire, 64 megapixels decoded
    body = {"kind": "upscale", "image": bomb, "upscaler": "demo-esrgan-x4", "scale": 4}
    refused(farm, body, 422, "image", "is 8000x8000 (64.0 MP), larger than the farm's")
    init = {**TINY, "kind": "img2img", "init_image": png(9000, 9000, "1")}
    refused(farm, init, 422, "init_image", "is 9000x9000")


def test_a_hires_fix_is_bounded_by_its_second_pass(farm):
    body = {**TINY, "width": 2048, "height": 2048, "hires": {"scale": 4}}
    refused(farm, body, 422, "hires", "the second pass would render to 8192x8192")


@pytest.mark.parametrize(
    ("width", "height", "reason"),
    [
        (8192, 1, "each side must be at least 16 pixels"),
        (1, 1, "each side must be at least 16 pixels"),
        (8192, 8192, "larger than the farm's 16.8 MP limit"),
    ],
)
def test_an_upscale_to_a_size_is_bounded(farm, width, height, reason):
    body = {
        "kind": "upscale",
        "image": png(64, 64),
        "upscaler": "demo-esrgan-x4",
        "width": width,
        "height": height,
    }
    refused(farm, body, 422, "width", reason)


def test_a_mask_of_another_size_than_the_init_image_is_fitted_to_the_job(farm):
    job = farm.submit(**TINY, kind="img2img", init_image=png(96, 80), mask=png(40, 24, "L"))
    done = farm.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert Image.open(io.BytesIO(farm.client.output(job["id"], 0))).size == (64, 64)


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/batches"])
def test_deeply_nested_json_is_a_400_not_a_500(farm, path):
    resp = farm.client.request(
        "POST", path, data="[" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    assert "nested too deeply" in resp.json()["errors"][0]["reason"]


def test_a_body_over_the_limit_is_a_413_before_it_is_read(farm):
    before = farm.redis.zcard(keys.jobs_index())
    body = b'{"prompt": "' + b"x" * (50 * 2**20) + b'"}'
    resp = farm.client.request(
        "POST", "/api/v1/jobs", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 413 and "RENDERFARM_MAX_REQUEST_MB" in resp.json()["error"]
    assert farm.redis.zcard(keys.jobs_index()) == before


def test_quotas_queued_jobs_and_hardware_classes(farm):
    accounts = ensure_account(farm.redis, "quota-user")
    accounts.set_limits("quota-user", max_queued=2, hardware=["cpu"])
    client = farm.as_account("quota-user")
    waiting = {**TINY, "hardware": "cpu", "prompt": "quota"}
    gpu = client.request("POST", "/api/v1/jobs", json={**waiting, "hardware": "gpu"})
    assert gpu.status_code == 429 and gpu.json()["limit"] == "hardware"
    assert "may not use gpu workers (allowed: cpu)" in gpu.json()["error"]
    worker = farm.cpu_worker()
    farm.client.drain(worker)  # hold the two jobs in the queue
    try:
        held = [client.submit(waiting)["id"] for _ in range(2)]
        over = client.request("POST", "/api/v1/jobs", json=waiting)
        assert over.status_code == 429 and over.json()["limit"] == "max_queued"
        assert "has 2 jobs queued; its limit is 2" in over.json()["error"]
        batch = client.request("POST", "/api/v1/batches", json={"jobs": [waiting]})
        assert batch.status_code == 429
        assert sorted(j["id"] for j in client.jobs(500) if j["owner"] == "quota-user") == sorted(
            held
        ), "nothing over the quota was recorded"
    finally:
        farm.client.drain(worker, draining=False)
    for job_id in held:  # undrained, the worker runs what the quota let in
        assert farm.wait(job_id)["status"] == "succeeded"


def test_max_queued_holds_exactly_under_concurrent_submissions_and_batches(farm):
    """The quota check and the record are one step: 16 clients racing for the last places
    get exactly as many as the limit, and a batch that does not fit queues none of its
    jobs, even with room for some."""
    name = "racing-user"
    accounts = ensure_account(farm.redis, name)
    accounts.set_limits(name, max_queued=5, max_running=0)  # nothing leaves the queue
    clients = [farm.as_account(name) for _ in range(16)]
    spec = {**TINY, "prompt": "race"}
    start = threading.Barrier(len(clients))

    def race(client) -> list[int]:
        start.wait()
        return [client.request("POST", "/api/v1/jobs", json=spec).status_code for _ in range(2)]

    with ThreadPoolExecutor(len(clients)) as pool:
        statuses = [s for answers in pool.map(race, clients) for s in answers]
    assert sorted(set(statuses)) == [202, 429] and statuses.count(202) == 5, statuses
    mine = farm.client.jobs(200, owner=name)
    assert len(mine) == 5 and {j["status"] for j in mine} == {"queued"}
    accounts.set_limits(name, max_queued=7)  # room for two
    batch = clients[0].request("POST", "/api/v1/batches", json={"jobs": [spec] * 3})
    assert batch.status_code == 429 and "has 5 jobs queued; its limit is 7" in batch.text
    assert len(farm.client.jobs(200, owner=name)) == 5, "part of a refused batch was queued"
    made = clients[0].submit_batch([spec, spec])
    assert len(made["jobs"]) == 2
    assert len(farm.client.jobs(200, owner=name)) == 7
    # The audit log has each submission that was queued, written with it, and no other.
    audit = farm.client.request("GET", "/api/v1/audit", params={"actor": name, "limit": 100})
    entries = audit.json()["entries"]
    jobs = [e for e in entries if e["action"] == "job.submit"]
    assert sorted(e["target"] for e in jobs) == sorted(j["id"] for j in mine)
    [batched] = [e for e in entries if e["action"] == "batch.submit"]
    assert (batched["target"], batched["detail"]) == (made["id"], "2 jobs")
    assert len(entries) == 6 and all(e["token_id"] and e["source"] for e in entries)
    for job in farm.client.jobs(200, owner=name):
        farm.client.cancel(job["id"])
    for client in clients:
        client.close()


def test_the_dispatcher_holds_an_owners_jobs_at_its_running_limit(farm):
    accounts = ensure_account(farm.redis, "no-running")
    accounts.set_limits("no-running", max_running=0)
    client = farm.as_account("no-running")
    job = client.submit(TINY)
    for _ in range(100):
        job = client.job(job["id"])
        if job["waiting"]:
            break
        time.sleep(0.1)
    assert job["status"] == "queued"
    assert job["waiting"] == "waiting: no-running has 0 jobs running, its limit", job
    accounts.set_limits("no-running", max_running=1)
    client.cancel(job["id"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/jobs/x/priority"),
        ("POST", "/api/v1/workers/x/drain"),
        ("POST", "/api/v1/tokens"),
        ("POST", "/api/v1/accounts"),
    ],
)
def test_every_json_route_answers_deep_nesting_with_a_400(farm, method, path):
    resp = farm.client.request(
        method, path, data="[" * 100_000, headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400, resp.text
