"""Deleting jobs and keeping the farm's history bounded: a deleted job leaves nothing behind
in Redis or storage, an input image another job names is kept, an active job is never
deleted, and jobs older than `keep_jobs_days` go by themselves. In-process on a Redis of its
own with file storage, and through the API of the real farm (its scheduler empties the
trash in the S3 server)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image
from redis import Redis

from dashboard import thumbnails
from scheduler.batches import Batches
from scheduler.control import ConflictError, JobControl, SubmitError
from scheduler.dispatcher import Dispatcher
from scheduler.events import JobEvents
from scheduler.quotas import Quota, QuotaExceeded
from scheduler.records import Deleted
from scheduler.retention import INPUT_GRACE_S, Retention
from shared import keys
from shared.client import ApiError
from shared.config import Settings
from shared.jobspec import input_key, parse_spec
from shared.storage import FileStorage
from shared.vocabulary import Hardware, JobStatus, Priority
from tests.conftest import BUCKET, s3_client, settings_on_db
from tests.signin import account_token
from tests.test_metrics import scrape, value

S = JobStatus
NORMAL = Priority.NORMAL
TINY = {"model": "demo-sd15", "prompt": "p", "width": 64, "height": 64, "steps": 1}


def png_b64(colour) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def jobs(redis_url, models_dir, tmp_path):
    settings = settings_on_db(redis_url, 10, models_dir, tmp_path / "storage")
    yield JobControl(settings)
    Redis.from_url(settings.redis_url).flushdb()


def retention(jobs: JobControl, keep_days: float = 0) -> Retention:
    return Retention(jobs.redis, jobs.storage, Settings(keep_jobs_days=keep_days))


def submit(jobs: JobControl, owner: str = "ann", **spec) -> str:
    return jobs.submit(parse_spec({**TINY, **spec}, jobs.settings), owner)[0]["id"]


def succeed(jobs: JobControl, job_id: str, finished_at: float | None = None) -> None:
    """Through dispatch and a run to success as the dispatcher and a worker would, with an
    output, a thumbnail and a manifest in storage."""
    jobs.pending.remove(job_id, jobs.owner_of(job_id))
    assert jobs.records.transition(job_id, S.DISPATCHED, (S.PENDING,), attempt=1, target="w")
    assert jobs.records.transition(job_id, S.RUNNING, (S.DISPATCHED,), 1, worker="w")
    output = f"jobs/{job_id}/1/image-0.png"
    for key in (output, f"jobs/{job_id}/1/manifest.json", f"thumbs/{job_id}/0-256.webp"):
        jobs.storage.put(key, b"x", "application/octet-stream")
    done = finished_at or time.time()
    assert jobs.records.transition(
        job_id, S.SUCCEEDED, (S.RUNNING,), 1, outputs=[output], finished_at=done
    )


def written_long_ago(jobs: JobControl, key: str) -> None:
    """As if the object had been written before the retention step's grace period (and, if
    it was waiting it out aside, that was long ago)."""
    then = time.time() - INPUT_GRACE_S - 60
    os.utime(jobs.storage._path(key), (then, then))
    jobs.redis.zadd(keys.trash_later(), {key: then}, xx=True)


def held(redis: Redis, key: bytes) -> list[bytes]:
    """What the key holds: a sorted set's, set's or list's members, a hash's fields and values."""
    kind = redis.type(key).decode()
    if kind == "zset":
        return redis.zrange(key, 0, -1)
    if kind == "set":
        return list(redis.smembers(key))
    if kind == "list":
        return redis.lrange(key, 0, -1)
    if kind == "hash":
        return [*redis.hkeys(key), *redis.hvals(key)]
    return [redis.get(key)] if kind == "string" else []


def naming(redis: Redis, job_id: str) -> list[str]:
    """Every Redis key that names the job or holds it (the events stream aside: history)."""
    return [
        raw.decode()
        for raw in redis.scan_iter()
        if raw.decode() != keys.events()
        and (job_id in raw.decode() or any(job_id.encode() in v for v in held(redis, raw)))
    ]


def test_a_deleted_job_leaves_nothing_in_redis_or_storage(jobs):
    job = submit(jobs, kind="img2img", init_image=png_b64((200, 40, 40)))
    succeed(jobs, job)
    input_key = jobs.records.get(job)["spec"]["init_image"]
    storage = jobs.storage
    assert naming(jobs.redis, job) and storage.exists(f"jobs/{job}/1/image-0.png")

    jobs.delete(job)
    assert jobs.records.get(job) is None
    keep = retention(jobs)
    keep.step()
    assert naming(jobs.redis, job) == []
    for key in (f"jobs/{job}/1/image-0.png", f"jobs/{job}/1/manifest.json",
                f"thumbs/{job}/0-256.webp"):  # fmt: skip
        assert not storage.exists(key), key
    # Its input waits out the grace period (a submission may be writing it again), then goes.
    assert storage.exists(input_key)
    written_long_ago(jobs, input_key)
    keep.step()
    assert not storage.exists(input_key)
    assert jobs.redis.llen(keys.trash()) == 0
    with pytest.raises(KeyError):
        jobs.delete(job)  # gone already


def test_a_thumbnail_made_while_its_job_is_deleted_is_not_left_behind(jobs, tmp_path):
    """A gallery's thumbnail request reads the record, then the output; the job is deleted and
    its trash emptied before the thumbnail is stored: it must not stay in storage."""
    job = submit(jobs)
    succeed(jobs, job)
    output = jobs.records.get(job)["outputs"][0]
    buf = io.BytesIO()
    Image.new("RGB", (256, 256), (10, 120, 200)).save(buf, "PNG")
    jobs.storage.put(output, buf.getvalue(), "image/png")
    jobs.storage.delete(f"thumbs/{job}/")

    class DeletedOnceRead(FileStorage):
        """The same store; the job is deleted (and the trash emptied) the moment its output
        has been read, as a user deleting it from another tab would."""

        def get(self, key: str) -> bytes:
            data = super().get(key)
            if key == output:
                jobs.delete(job)
                retention(jobs).step()
            return data

    storage = DeletedOnceRead(jobs.storage.root)
    data = thumbnails.thumbnail(storage, jobs.records, output, job, 0, 128)
    assert Image.open(io.BytesIO(data)).size == (128, 128)  # the request still gets its image
    assert not storage.exists(output)
    assert not storage.exists(thumbnails.thumbnail_key(job, 0, 128))


def test_an_input_waiting_out_its_grace_period_is_not_counted_as_trash(jobs):
    """The trash metric alerts when it stays above 0: an input image of a job deleted just
    after it ran is not stuck, and is not looked at again until it may go."""
    job = submit(jobs, kind="img2img", init_image=png_b64((60, 10, 200)))
    key = jobs.records.get(job)["spec"]["init_image"]
    jobs.cancel(job)
    jobs.delete(job)
    keep = retention(jobs)
    keep.step()
    assert jobs.redis.llen(keys.trash()) == 0 and jobs.storage.exists(key)
    waits_until = jobs.redis.zscore(keys.trash_later(), key)
    assert time.time() + INPUT_GRACE_S - 60 < waits_until <= time.time() + INPUT_GRACE_S
    written_long_ago(jobs, key)
    keep.step()
    assert not jobs.storage.exists(key)
    assert jobs.redis.llen(keys.trash()) == jobs.redis.zcard(keys.trash_later()) == 0


def test_a_deleted_jobs_idempotency_key_makes_a_new_job(jobs):
    spec = parse_spec(TINY, jobs.settings)
    first, created = jobs.submit(spec, "ann", NORMAL, "key-1")
    assert created and jobs.submit(spec, "ann", NORMAL, "key-1")[0]["id"] == first["id"]
    jobs.cancel(first["id"])
    jobs.delete(first["id"])
    retention(jobs).step()
    assert naming(jobs.redis, first["id"]) == []
    again, created = jobs.submit(spec, "ann", NORMAL, "key-1")  # not a 5 s wait, then a 409
    assert created and again["id"] != first["id"]


def test_an_input_image_another_job_names_is_kept(jobs):
    image = png_b64((10, 120, 30))
    first = submit(jobs, kind="img2img", init_image=image)
    second = submit(jobs, kind="img2img", init_image=image)
    key = jobs.records.get(first)["spec"]["init_image"]
    for job in (first, second):
        jobs.cancel(job)
    jobs.delete(first)
    written_long_ago(jobs, key)
    retention(jobs).step()
    assert jobs.storage.exists(key), "the second job still names it"
    jobs.delete(second)
    written_long_ago(jobs, key)
    retention(jobs).step()
    assert not jobs.storage.exists(key)


def test_an_input_reused_by_key_after_its_last_job_was_deleted_stays(jobs):
    first = submit(jobs, kind="img2img", init_image=png_b64((90, 90, 200)))
    key = jobs.records.get(first)["spec"]["init_image"]
    jobs.cancel(first)
    jobs.delete(first)
    written_long_ago(jobs, key)
    again = submit(jobs, kind="img2img", init_image=key)  # "Reuse settings" of the first
    retention(jobs).step()
    assert jobs.storage.exists(key) and jobs.records.get(again)["spec"]["init_image"] == key
    # Even one the trash step reads while that submission is between writing the image
    # and recording its job: the image was written just now, so it is not deleted yet.
    jobs.redis.rpush(keys.trash(), key)
    jobs.redis.hdel(keys.input_refs(), key)
    retention(jobs).step()
    assert jobs.storage.exists(key)


def test_the_input_of_a_submission_refused_over_its_quota_is_not_kept(jobs):
    """The images are stored before the record step checks `max_queued`: a refused
    submission's are trashed (deleted once past the grace period, unless a job names one)."""
    shared = submit(jobs, kind="img2img", init_image=png_b64((5, 150, 5)))
    shared_key = jobs.records.get(shared)["spec"]["init_image"]
    full = Quota(max_queued=1, max_running=4, hardware=tuple(Hardware))
    refused_image = png_b64((150, 5, 5))
    refused_key = input_key(base64.b64decode(refused_image))  # a PNG is stored as sent
    for image in (refused_image, shared_key):
        spec = parse_spec({**TINY, "kind": "img2img", "init_image": image}, jobs.settings)
        with pytest.raises(QuotaExceeded):
            jobs.submit(spec, "ann", NORMAL, quota=full)
    assert jobs.storage.exists(refused_key)
    keep = retention(jobs)
    keep.step()
    for key in (refused_key, shared_key):
        written_long_ago(jobs, key)
    keep.step()
    assert not jobs.storage.exists(refused_key), "no job names it: it would stay for ever"
    assert jobs.storage.exists(shared_key), "the first job still names it"
    assert jobs.redis.llen(keys.trash()) == jobs.redis.zcard(keys.trash_later()) == 0


def test_reusing_an_input_deleted_with_its_last_job_says_to_send_the_image_again(jobs):
    """A submit page left open on "Reuse settings" of a job deleted meanwhile names the
    image by key; once it is gone the refusal says what happened and what to do."""
    first = submit(jobs, kind="img2img", init_image=png_b64((90, 30, 200)))
    key = jobs.records.get(first)["spec"]["init_image"]
    jobs.cancel(first)
    jobs.delete(first)
    written_long_ago(jobs, key)
    retention(jobs).step()
    assert not jobs.storage.exists(key)
    with pytest.raises(SubmitError) as refused:
        submit(jobs, kind="img2img", init_image=key)
    assert refused.value.field == "init_image"
    assert refused.value.reason == (
        f"no stored input {key!r} (deleted with the last job that named it, or never stored):"
        " send the image itself"
    )


def test_a_batch_and_its_idempotency_key_go_with_the_last_of_its_jobs(jobs):
    batches = Batches(jobs)
    specs = [parse_spec({**TINY, "batch_count": 2}, jobs.settings)]
    batch, _ = batches.submit(specs, "ann", NORMAL, idempotency_key="key-1")
    first, second = (job["id"] for job in batch["jobs"])
    batches.cancel(batch["id"])
    jobs.delete(first)
    assert [job["id"] for job in batches.get(batch["id"])["jobs"]] == [second]
    again, created = batches.submit(specs, "ann", NORMAL, idempotency_key="key-1")
    assert not created and again["id"] == batch["id"], "the key still names the batch"
    jobs.delete(second)
    assert batches.get(batch["id"]) is None
    retention(jobs).step()
    assert naming(jobs.redis, batch["id"]) == [] and naming(jobs.redis, second) == []
    assert naming(jobs.redis, "key-1") == []
    new, created = batches.submit(specs, "ann", NORMAL, idempotency_key="key-1")
    assert created and new["id"] != batch["id"]


def test_a_queued_or_running_job_is_not_deleted(jobs):
    waiting = submit(jobs)
    assert jobs.records.delete(waiting) is Deleted.ACTIVE
    with pytest.raises(ConflictError, match="cancel it first"):
        jobs.delete(waiting)
    jobs.pending.remove(waiting, "ann")
    assert jobs.records.transition(waiting, S.DISPATCHED, (S.PENDING,), attempt=1, target="w")
    assert jobs.records.transition(waiting, S.RUNNING, (S.DISPATCHED,), 1, worker="w")
    assert jobs.records.delete(waiting) is Deleted.ACTIVE
    assert jobs.records.get(waiting)["status"] == S.RUNNING


def test_jobs_finished_before_the_cutoff_expire_and_active_ones_stay(jobs):
    active = [submit(jobs) for _ in range(3)]  # the oldest: they must not hold up the rest
    old = [submit(jobs) for _ in range(4)]
    recent = submit(jobs)
    for job in old:
        succeed(jobs, job)
    cutoff = time.time() + 1
    succeed(jobs, recent, finished_at=cutoff + 100)  # created before the cutoff, finished after
    assert retention(jobs, keep_days=0).step() == (0, 0), "keep_jobs_days 0: kept"
    assert retention(jobs, keep_days=1).expire(cutoff) == 4
    assert [jobs.records.get(j) for j in old] == [None] * 4
    assert all(jobs.records.get(j)["status"] == S.PENDING for j in active)
    assert jobs.records.get(recent)["status"] == S.SUCCEEDED
    assert retention(jobs, keep_days=1).expire(cutoff) == 0


def test_storage_that_hangs_holds_up_no_dispatching(redis_url, models_dir, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, never answers
        settings = settings_on_db(redis_url, 8, models_dir, tmp_path).model_copy(
            update={
                "storage_url": "s3://renders/farm",
                "s3_endpoint_url": f"http://127.0.0.1:{silent.getsockname()[1]}",
                "s3_access_key_id": "testing",
                "s3_secret_access_key": "testing",
            }
        )
        jobs, dispatcher = JobControl(settings), Dispatcher(settings)
        beat = {"name": "w", "hardware": "cpu", "kinds": ["txt2img"],
                "store": {"checkpoint": ["demo-sd15"]}, "models": [], "cache_budget": 2**30,
                "cache_bytes": 0}  # fmt: skip
        jobs.redis.set(keys.worker("w"), json.dumps(beat), px=60_000)
        jobs.redis.sadd(keys.workers_index(), "w")
        jobs.redis.rpush(keys.trash(), "jobs/deleted-one/")  # its storage call hangs
        loop = threading.Thread(target=dispatcher.run_forever, daemon=True)
        loop.start()
        try:
            time.sleep(3)  # the retention step has begun
            job = submit(jobs)
            deadline = time.monotonic() + 5
            while jobs.records.get(job)["status"] == S.PENDING:
                assert time.monotonic() < deadline, "dispatching waits for storage"
                time.sleep(0.1)
        finally:
            dispatcher.stopping.set()
            loop.join(timeout=5)
            jobs.redis.flushdb()


# -- through the API, on the real farm ---------------------------------------------------


def stored(farm, prefix: str) -> list[str]:
    listed = s3_client(farm.env).list_objects_v2(Bucket=BUCKET, Prefix=f"farm/{prefix}")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_deleting_a_job_through_the_api(farm, tmp_path):
    owner = farm.as_account("deleter", "member")
    done = owner.wait(owner.submit(TINY)["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    job = done["id"]
    owner.thumbnail(job, 0)
    assert stored(farm, f"jobs/{job}/") and stored(farm, f"thumbs/{job}/")
    waiting = owner.submit({**TINY, "hardware": "gpu"})  # no GPU worker: it waits

    for who, role in (("someone-else", "member"), ("onlooker", "viewer")):
        with farm.as_account(who, role) as other, pytest.raises(ApiError) as refused:
            other.delete(job)
        assert refused.value.status == 403, who
    with pytest.raises(ApiError) as active:
        owner.delete(waiting["id"])
    assert active.value.status == 409 and "cancel it first" in active.value.body["error"]

    before = JobEvents(farm.redis).last_id()
    operator = account_token(farm.redis, "retention-operator", "operator")
    figures = scrape(farm.url, operator)
    assert owner.delete(job) == {"id": job, "deleted": True}
    now = scrape(farm.url, operator)
    for name, change in (("renderfarm_jobs_deleted_total", 1), ("renderfarm_jobs_recorded", -1)):
        assert value(now, name) == value(figures, name) + change, name
    said = next(e for e in owner.events(last_id=before, timeout=10) if e["job"] == job)
    assert said["deleted"] is True and said["status"] == "succeeded"
    with pytest.raises(ApiError) as gone:
        owner.job(job)
    assert gone.value.status == 404
    assert job not in [j["id"] for j in owner.jobs(owner="me")]
    assert job not in [item["job"] for item in owner.gallery(owner="me")["items"]]
    entry = farm.client.request("GET", "/api/v1/audit", params={"target": job}).json()
    assert [e["action"] for e in entry["entries"]][0] == "job.delete"
    # The scheduler empties the trash within seconds.
    deadline = time.monotonic() + 30
    while stored(farm, f"jobs/{job}/") or stored(farm, f"thumbs/{job}/"):
        assert time.monotonic() < deadline, "the outputs are still in storage"
        time.sleep(0.5)

    # The command line: a canceled job deleted, then a second time refused.
    owner.cancel(waiting["id"])
    env = {**os.environ, "RENDERFARM_TOKEN": account_token(farm.redis, "deleter")}
    cli = [sys.executable, "-m", "renderfarm", "delete", waiting["id"], "--api", farm.url]
    first = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0 and f"{waiting['id']} deleted" in first.stdout, first.stderr
    again = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "404" in again.stderr + again.stdout
    owner.close()
