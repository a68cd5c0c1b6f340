"""The queue page's REST API on a real farm: filters and paging, queue positions and ETAs,
attempts and stages, thumbnails and the gallery."""

import io

from PIL import Image

from shared import keys
from shared.client import ApiError
from tests.signin import ensure_account

SPEC = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 2}


def test_filters_and_paging(farm):
    ensure_account(farm.redis, "qa-ann")
    word = "zebra-quokka"
    held = [
        farm.submit(owner="qa-ann", prompt=f"{word} {i}", hardware="gpu", **SPEC) for i in range(3)
    ]
    try:
        mine = farm.as_account("qa-ann")
        page1 = mine.find_jobs(owner="me", status="queued", per_page=2)
        assert (page1["total"], page1["page"], page1["per_page"]) == (3, 1, 2)
        assert [j["id"] for j in page1["jobs"]] == [held[2]["id"], held[1]["id"]]
        page2 = mine.find_jobs(owner="me", status=["queued", "failed"], per_page=2, page=2)
        assert [j["id"] for j in page2["jobs"]] == [held[0]["id"]]
        found = farm.client.find_jobs(q=word.upper(), hardware="gpu", model="demo-sd15")
        assert {j["id"] for j in found["jobs"]} == {j["id"] for j in held}
        assert farm.client.find_jobs(q=word, status="succeeded")["total"] == 0
        assert len(farm.client.jobs(limit=2)) == 2  # the old parameter still works
        assert farm.client.jobs(limit=5, owner="qa-ann", q=word)[0]["id"] == held[2]["id"]
        bad = farm.client.request("GET", "/api/v1/jobs", params={"status": "dispatched"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "status"
        # A class that does not exist is named, as a status is, not an empty page.
        bad = farm.client.request("GET", "/api/v1/jobs", params={"hardware": "tpu"})
        assert bad.status_code == 422 and bad.json()["errors"] == [
            {"field": "hardware", "reason": "must be one of auto, cpu, openvino, gpu"}
        ]
        assert (
            farm.client.request("GET", "/api/v1/jobs", params={"per_page": 201}).status_code == 422
        )
        # A page far past the end is empty; one past what Redis can count is refused, by name.
        assert mine.find_jobs(owner="me", page=10**6)["jobs"] == []
        for path in ("/api/v1/jobs", "/api/v1/gallery"):
            deep = farm.client.request("GET", path, params={"page": 10**18})
            assert deep.status_code == 422 and deep.json()["errors"][0]["field"] == "page", path
    finally:
        for job in held:
            farm.client.cancel(job["id"])


def test_a_number_in_the_address_that_is_not_one_is_refused_by_name(farm):
    """`page=abc` is a 422 naming `page`, as `page=0` is, not the first page as if absent."""
    for path, params, field in (
        ("/api/v1/jobs", {"page": "abc"}, "page"),
        ("/api/v1/jobs", {"per_page": "1.5"}, "per_page"),
        ("/api/v1/jobs", {"limit": "ten"}, "limit"),
        ("/api/v1/gallery", {"page": "2nd"}, "page"),
        ("/api/v1/gallery", {"per_page": "x"}, "per_page"),
        ("/api/v1/audit", {"limit": "all"}, "limit"),
    ):
        resp = farm.client.request("GET", path, params=params)
        assert resp.status_code == 422, (path, params, resp.text)
        assert resp.json()["errors"] == [{"field": field, "reason": "must be a whole number"}]
    assert farm.client.request("GET", "/api/v1/jobs", params={"page": ""}).ok  # = absent


def test_waiting_jobs_have_a_position_and_an_eta(farm):
    # A few jobs succeed first: the render-time history for this size and steps on cpu.
    done = [farm.submit(prompt="warm-up", **SPEC) for _ in range(2)]
    for job in done:
        assert farm.wait(job["id"])["status"] == "succeeded"
    finished = farm.job(done[0]["id"])
    assert finished["queue_position"] is None and finished["render_s"] > 0
    st = finished["stages"]
    assert st["total_s"] >= st["running_s"] > 0 and st["queued_s"] is not None
    assert finished["attempts_history"][0]["outcome"] == "succeeded"
    assert finished["outputs"][0]["thumbnail_url"].endswith("/thumbnail")
    worker = farm.cpu_worker()
    farm.client.drain(worker)
    try:
        first = farm.submit(prompt="held 1", **SPEC)
        second = farm.submit(prompt="held 2", **SPEC)
        unknown = farm.submit(prompt="held, no history", **{**SPEC, "steps": 3})
        jobs = {j["id"]: j for j in farm.client.find_jobs(status="queued", per_page=200)["jobs"]}
        a, b, c = (jobs[j["id"]] for j in (first, second, unknown))
        assert a["queue_position"] < b["queue_position"] < c["queue_position"]
        # Drained, the only cpu worker takes nothing: no live able worker, no ETA.
        assert a["eta_s"] is None
    finally:
        farm.client.drain(worker, False)
    # Undrained: the ETA counts the work ahead on the one worker.
    # A size and step count no other test renders on this session-wide farm.
    late = farm.submit(prompt="no history size", **{**SPEC, "width": 88, "steps": 13})
    view = farm.job(late["id"])
    if view["status"] == "queued":
        assert view["eta_s"] is None  # no history for 88x64, 13 steps
    for job in (first, second, unknown, late):
        farm.wait(job["id"])
    assert farm.job(late["id"])["queue_position"] is None


def test_queued_job_eta_from_history(farm):
    for _ in range(2):
        farm.wait(farm.submit(prompt="history", **SPEC)["id"])
    # A long job holds the one cpu worker; the job behind it waits with a live able worker.
    blocker = farm.submit(prompt="blocker", **{**SPEC, "width": 1024, "height": 1024, "steps": 40})
    try:
        farm.client.wait(blocker["id"], until=("running",))
        job = farm.submit(prompt="eta", **SPEC)
        view = farm.job(job["id"])
        assert view["status"] == "queued" and view["queue_position"] >= 1
        assert isinstance(view["eta_s"], float) and 0 <= view["eta_s"] < 60  # a number: history
        running = farm.job(blocker["id"])
        assert running["status"] != "running" or running["eta_s"] is None  # no history
    finally:
        farm.client.cancel(blocker["id"])
    assert farm.wait(job["id"])["status"] == "succeeded"


def test_thumbnail_is_small_and_cached(farm):
    job = farm.wait(farm.submit(prompt="thumb", **{**SPEC, "width": 512, "height": 320})["id"])
    data = farm.client.thumbnail(job["id"], 0)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "WEBP" and im.size == (256, 160)
    key = f"farm/thumbs/{job['id']}/0-256.webp"
    from tests.conftest import BUCKET, s3_client

    assert s3_client(farm.env).head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(data)
    resp = farm.client.request("GET", f"/api/v1/jobs/{job['id']}/outputs/0/thumbnail")
    assert resp.content == data and "max-age=2592000" in resp.headers["Cache-Control"]
    with Image.open(io.BytesIO(farm.client.thumbnail(job["id"], 0, size=128))) as im:
        assert max(im.size) == 128
    try:
        farm.client.thumbnail(job["id"], 0, size=999)
    except ApiError as exc:
        assert exc.status == 422
    word = farm.client.request("GET", f"/api/v1/jobs/{job['id']}/outputs/0/thumbnail?size=big")
    assert word.status_code == 422 and word.json()["errors"][0]["field"] == "size", word.text
    assert (
        farm.client.request("GET", f"/api/v1/jobs/{job['id']}/outputs/5/thumbnail").status_code
        == 404
    )


def test_gallery_lists_the_new_output(farm):
    viewer = farm.as_account("qa-viewer", "viewer")
    ensure_account(farm.redis, "qa-gal")
    job = farm.wait(farm.submit(owner="qa-gal", prompt="gallery fox", **SPEC)["id"])
    items = viewer.gallery(per_page=5)["items"]
    assert (items[0]["job"], items[0]["index"], items[0]["prompt"]) == (job["id"], 0, "gallery fox")
    assert items[0]["thumbnail_url"] == job["outputs"][0]["thumbnail_url"]
    mine = farm.as_account("qa-gal").gallery(owner="me")
    assert mine["total"] == 1 and mine["items"][0]["owner"] == "qa-gal"
    assert farm.redis.zscore(keys.gallery("qa-gal"), f"{job['id']}:0") is not None


def test_batch_and_attempts_after_a_retry(farm):
    batch = farm.client.submit_batch(spec={**SPEC, "prompt": "batch", "batch_count": 2})
    assert {j["batch"] for j in batch["jobs"]} == {batch["id"]}
    job = farm.submit(prompt="to retry", hardware="gpu", **SPEC)
    farm.client.cancel(job["id"])
    farm.client.retry(job["id"])
    farm.client.cancel(job["id"])
    for child in batch["jobs"]:
        farm.wait(child["id"])
    ran = farm.job(batch["jobs"][0]["id"])
    assert [h["outcome"] for h in ran["attempts_history"]] == ["succeeded"]
    assert ran["attempts_history"][0]["worker"] == ran["worker"]
