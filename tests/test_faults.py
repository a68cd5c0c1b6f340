"""No job lost, none done twice: real processes killed, Redis restarted, S3 cut off.

Bounded in time: every wait has a deadline; the farm uses 0.5 s heartbeats and 2 s leases.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from scheduler.celery_app import RUN_JOB, make_celery
from shared import keys
from shared.config import Settings
from tests.conftest import BUCKET, s3_client
from tests.faultfarm import FaultFarm, pid_of
from tests.signin import account_token, ensure_account

QUICK = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 3}
SLOW = {"model": "demo-sd15", "width": 256, "height": 256, "steps": 40}
LONG = {**SLOW, "steps": 150}  # keeps a worker busy while the test acts


@pytest.fixture(scope="module")
def ff(tmp_path_factory, models_dir, s3_env):
    farm = FaultFarm(tmp_path_factory.mktemp("faultfarm"), models_dir, s3_env)
    yield farm
    farm.close()


def objects(ff, job_id: str) -> list[str]:
    listing = s3_client(ff.s3_direct).list_objects_v2(
        Bucket=BUCKET, Prefix=f"faults/jobs/{job_id}/"
    )
    return sorted(o["Key"].split(f"{job_id}/", 1)[1] for o in listing.get("Contents", []))


def running_with_progress(ff, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        job = ff.job(job_id)
        if job["status"] == "running" and job["progress"] > 0:
            return job
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline
        time.sleep(0.02)


def lost_attempts(ff) -> float:
    """`renderfarm_jobs_finished_total{outcome="lost"}` as Prometheus scrapes it."""
    sample = 'renderfarm_jobs_finished_total{outcome="lost"}'
    lines = ff.client.request("GET", "/metrics").text.splitlines()
    return float(next(x for x in lines if x.startswith(sample)).split()[-1])


def test_worker_killed_mid_job_the_job_completes_elsewhere_once(ff):
    ff.wait_workers(2)
    lost_before = lost_attempts(ff)
    job = ff.submit(prompt="survivor", seed=1, **SLOW)
    victim = running_with_progress(ff, job["id"])["worker"]
    os.kill(pid_of(victim), signal.SIGKILL)
    done = ff.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert lost_attempts(ff) == lost_before + 1  # the operator sees the lost attempt
    assert done["attempts"] == 2 and done["worker"] != victim
    assert "lost its worker" in (done["note"] or "") or done["attempts"] == 2
    attempt = done["outputs"][0]["key"].split("/")[2]
    assert objects(ff, job["id"]) == [f"{attempt}/image-0.png", f"{attempt}/manifest.json"]


def test_a_stalled_job_is_given_up_and_completes_elsewhere_once(ff):
    """The watchdog (RENDERFARM_STALL_S=12 here): a job that hangs mid-render is no longer
    renewed, the scheduler runs it on the other worker, the stalled attempt's late writes are
    refused, and both workers go on."""
    ff.wait_workers(2)
    job = ff.submit(prompt="stall", seed=2, **QUICK)
    done = ff.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    logs = "".join(p.read_text() for p in ff.logs.glob("worker*.log"))
    assert f"job {job['id']} made no progress for 12s; giving it up" in logs
    time.sleep(1)  # the stalled attempt has woken up by now: it must have written nothing
    attempt = done["outputs"][0]["key"].split("/")[2]
    assert objects(ff, job["id"]) == [f"{attempt}/image-0.png", f"{attempt}/manifest.json"]
    after = [ff.submit(prompt=f"after the stall {i}", **QUICK) for i in range(3)]
    assert {ff.wait(j["id"])["status"] for j in after} == {"succeeded"}


def test_poison_job_fails_after_max_attempts_and_the_fleet_goes_on(ff):
    ff.wait_workers(2)
    poison = ff.submit(prompt="poison", **QUICK)
    others = [ff.submit(prompt=f"bystander {i}", **QUICK) for i in range(3)]
    failed = ff.wait(poison["id"])
    assert failed["status"] == "failed"
    assert "failed after 2 attempts" in failed["error"] and failed["attempts"] == 2
    assert all(ff.wait(o["id"])["status"] == "succeeded" for o in others)
    assert objects(ff, poison["id"]) == []


def test_the_same_task_delivered_twice_runs_once(ff):
    job = ff.wait(ff.submit(prompt="once", **QUICK)["id"])
    seq = int(ff.redis.hget(keys.job(job["id"]), "seq"))
    celery = make_celery(Settings(redis_url=ff.redis_url))
    worker = ff.live()[0]["name"]
    attempt = int(job["outputs"][0]["key"].split("/")[2])
    celery.send_task(RUN_JOB, args=[job["id"], attempt], queue=keys.worker_queue(worker))
    deadline = time.monotonic() + 30
    while ff.redis.llen(keys.worker_queue(worker)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1)
    assert int(ff.redis.hget(keys.job(job["id"]), "seq")) == seq, "the record did not move"
    assert objects(ff, job["id"]) == [f"{attempt}/image-0.png", f"{attempt}/manifest.json"]


def test_cancel_queued_and_running_jobs_and_retry(ff):
    ff.wait_workers(2)
    busy = [ff.submit(prompt="busy 0", **LONG), ff.submit(prompt="busy 1", **SLOW)]
    queued = ff.submit(prompt="never runs", **QUICK)
    for b in busy:
        running_with_progress(ff, b["id"])
    assert ff.job(queued["id"])["status"] == "queued"
    canceled = ff.client.cancel(queued["id"])
    assert canceled["status"] == "canceled"
    stopped = ff.client.request("POST", f"/api/v1/jobs/{busy[0]['id']}/cancel")
    assert stopped.status_code == 200
    started = time.monotonic()
    assert ff.wait(busy[0]["id"])["status"] == "canceled"
    assert time.monotonic() - started < 10, "stops within a few denoising steps"
    assert ff.wait(busy[1]["id"])["status"] == "succeeded"
    assert ff.job(queued["id"])["started_at"] is None, "the queued job never ran"
    again = ff.client.request("POST", f"/api/v1/jobs/{queued['id']}/retry")
    assert again.status_code == 200 and again.json()["status"] == "queued"
    assert ff.wait(queued["id"])["status"] == "succeeded"
    # The worker whose job was canceled is healthy and takes new work.
    assert ff.wait(ff.submit(prompt="after cancel", **QUICK)["id"])["status"] == "succeeded"
    conflict = ff.client.request("POST", f"/api/v1/jobs/{queued['id']}/cancel")
    assert conflict.status_code == 409


def test_priority_order_and_per_owner_fairness(ff):
    ff.wait_workers(2)
    busy = [ff.submit(prompt=f"hold {i}", **SLOW) for i in range(2)]
    for b in busy:
        running_with_progress(ff, b["id"])
    batch = [ff.submit(prompt=f"batch {i}", owner="alice", **QUICK) for i in range(5)]
    low = ff.submit(prompt="low", owner="carol", priority="low", **QUICK)
    single = ff.submit(prompt="single", owner="bob", **QUICK)
    bumped = ff.submit(prompt="bumped", owner="carol", **QUICK)
    moved = ff.client.request(
        "POST", f"/api/v1/jobs/{bumped['id']}/priority", json={"priority": "high"}
    )
    assert moved.status_code == 200 and moved.json()["priority"] == "high"
    jobs = [ff.wait(j["id"]) for j in [*busy, *batch, low, single, bumped]]
    assert all(j["status"] == "succeeded" for j in jobs)
    order = [j["spec"]["prompt"] for j in sorted(jobs[2:], key=lambda j: j["dispatched_at"])]
    assert order[0] == "bumped", order
    assert order.index("single") <= 2, f"bob waits for at most one of alice's jobs: {order}"
    assert order[-1] == "low", order
    running = ff.client.request(
        "POST", f"/api/v1/jobs/{busy[0]['id']}/priority", json={"priority": "high"}
    )
    assert running.status_code == 409


def test_affinity_sends_a_job_to_the_worker_holding_its_model(ff):
    ff.wait_workers(2)
    first = ff.wait(ff.submit(prompt="xl", **{**QUICK, "model": "demo-sdxl"})["id"])
    holder = first["worker"]
    deadline = time.monotonic() + 30
    while not any(
        m["name"] == "demo-sdxl" for w in ff.live() if w["name"] == holder for m in w["models"]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for i in range(3):
        again = ff.wait(ff.submit(prompt=f"xl {i}", **{**QUICK, "model": "demo-sdxl"})["id"])
        assert again["worker"] == holder


def heartbeat_says_draining(ff, name: str, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(w["name"] == name and w["draining"] for w in ff.live()):
            return True
        time.sleep(0.1)
    return False


def test_drained_worker_takes_no_new_jobs(ff):
    # Earlier tests kill workers: drain one whose heartbeat shows it heard, i.e. a live one.
    for _ in range(5):
        drained = ff.wait_workers(2)[0]["name"]
        ff.client.drain(drained)
        if heartbeat_says_draining(ff, drained):
            break
    else:
        raise AssertionError("no worker reported draining")
    try:
        jobs = [ff.wait(ff.submit(prompt=f"d{i}", **QUICK)["id"]) for i in range(3)]
        assert all(j["status"] == "succeeded" and j["worker"] != drained for j in jobs)
    finally:
        ff.client.drain(drained, draining=False)


def test_a_job_waiting_because_every_worker_drains_says_so(ff):
    names = [w["name"] for w in ff.wait_workers(2)]
    for name in names:
        ff.client.drain(name)
    try:
        job = ff.submit(prompt="all drained", **QUICK)
        deadline = time.monotonic() + 30
        while not (waiting := ff.job(job["id"])["waiting"]):
            assert time.monotonic() < deadline, ff.job(job["id"])
            time.sleep(0.1)
        assert "waiting for a compatible worker" in waiting
        assert f"; {len(names)} live worker(s) draining" in waiting, waiting
    finally:
        for name in names:
            ff.client.drain(name, draining=False)
    assert ff.wait(job["id"])["status"] == "succeeded"


def test_idempotency_key_returns_the_same_job(ff):
    headers = {"Idempotency-Key": "retry-me-42"}
    body = {"prompt": "idem", **QUICK}
    first = ff.client.request("POST", "/api/v1/jobs", json=body, headers=headers)
    second = ff.client.request("POST", "/api/v1/jobs", json=body, headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    assert ff.wait(first.json()["id"])["status"] == "succeeded"


def test_redis_restart_loses_no_job(ff):
    ff.wait_workers(2)
    jobs = [ff.submit(prompt=f"persist {i}", **SLOW) for i in range(3)]
    running_with_progress(ff, jobs[0]["id"])
    ff.restart_redis(down_s=1.0)
    done = [ff.wait(j["id"], timeout=240) for j in jobs]
    assert [d["status"] for d in done] == ["succeeded"] * 3, [d["error"] for d in done]
    for d in done:
        attempt = d["outputs"][0]["key"].split("/")[2]
        assert f"{attempt}/image-0.png" in objects(ff, d["id"])


def test_s3_outage_delays_jobs_and_loses_none(ff):
    ff.wait_workers(2)
    ff.s3_proxy.pause()
    try:
        jobs = [ff.submit(prompt=f"outage {i}", **QUICK) for i in range(2)]
        deadline = time.monotonic() + 120
        while not all(ff.job(j["id"])["progress"] == 1.0 for j in jobs):  # rendered
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(2)  # uploads failing and being retried
        assert all(ff.job(j["id"])["status"] == "running" for j in jobs)
        assert all(objects(ff, j["id"]) == [] for j in jobs)
        # Not a silent 100%: the record says why the job has not finished.
        for j in jobs:
            note = ff.job(j["id"])["note"] or ""
            assert note.startswith("storing outputs: storage unreachable, retrying"), note
        shown = subprocess.run(  # and so does `renderfarm job`
            [sys.executable, "-m", "renderfarm", "job", jobs[0]["id"], "--api", ff.url],
            env={**os.environ, "RENDERFARM_TOKEN": account_token(ff.redis, "admin", "admin")},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "\nnote:     storing outputs: storage unreachable" in shown.stdout, shown.stderr
    finally:
        ff.s3_proxy.resume()
    for j in jobs:
        done = ff.wait(j["id"], timeout=120)
        assert done["status"] == "succeeded", done["error"]
        assert done["note"] is None  # the note went with the outage
        attempt = done["outputs"][0]["key"].split("/")[2]
        assert objects(ff, j["id"]) == [f"{attempt}/image-0.png", f"{attempt}/manifest.json"]


def test_a_batch_is_shared_by_the_workers(ff):
    ff.wait_workers(2)
    spec = {"prompt": "batch", **SLOW, "steps": 20, "seed": 100, "batch_count": 4}
    ensure_account(ff.redis, "dana")
    resp = ff.client.request("POST", "/api/v1/batches", json={"spec": spec, "owner": "dana"})
    assert resp.status_code == 202, resp.text
    batch = resp.json()
    assert [j["spec"]["seed"] for j in batch["jobs"]] == [100, 101, 102, 103]
    jobs = [ff.wait(j["id"]) for j in batch["jobs"]]
    assert all(j["status"] == "succeeded" for j in jobs)
    assert len({j["worker"] for j in jobs}) == 2, "both workers took part"
    done = ff.client.batch(batch["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0

    before = ff.redis.zcard(keys.jobs_index())
    bad = {"jobs": [{"prompt": "ok", **QUICK}, {"prompt": "bad", **{**QUICK, "width": 100}}]}
    refused = ff.client.request("POST", "/api/v1/batches", json=bad)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "jobs.1.width"
    assert ff.redis.zcard(keys.jobs_index()) == before, "nothing queued"


def test_a_job_no_live_worker_can_run_waits_visibly(ff):
    job = ff.submit(prompt="needs a gpu", hardware="gpu", **QUICK)
    deadline = time.monotonic() + 30
    while not (waiting := ff.job(job["id"])["waiting"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert ff.job(job["id"])["status"] == "queued"
    assert "waiting for a compatible worker (hardware gpu" in waiting
    ff.client.cancel(job["id"])
    assert ff.job(job["id"])["status"] == "canceled"
