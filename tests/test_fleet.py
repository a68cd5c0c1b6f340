"""Every worker advertises itself; `renderfarm workers` and the API show the live fleet."""

import os
import signal
import socket
import subprocess
import sys
import time

from renderfarm import localfarm


def fleet(farm) -> dict[str, dict]:
    return {w["name"]: w for w in farm.client.workers()}


def wait_until(check, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_heartbeat_describes_the_worker(farm):
    job = farm.wait(
        farm.submit(model="demo-sd15", prompt="beat", width=64, height=64, steps=2)["id"]
    )
    assert job["status"] == "succeeded"
    worker = farm.beat_after(job)
    assert job["worker"] in fleet(farm)  # GET /api/v1/workers lists it too
    assert worker["hardware"] == "cpu" and worker["device"] == "cpu"
    assert worker["device_name"] and worker["memory_total"] > worker["memory_used"] > 0
    assert worker["cache_budget"] == 8192 * 2**20
    assert any(m["path"].endswith("checkpoints/demo-sd15") for m in worker["models"])
    assert worker["cache_bytes"] == sum(m["size_bytes"] for m in worker["models"])
    assert worker["current_job"] is None
    assert {"torch", "diffusers", "celery"} <= worker["versions"].keys()
    assert job["worker"] in workers_table(farm)


def workers_table(farm) -> dict[str, str]:
    """`renderfarm workers`: each worker's line, by name."""
    out = subprocess.run(
        [sys.executable, "-m", "renderfarm", "workers"],
        env={**os.environ, **farm.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:4] == ["worker", "class", "state", "device"], header
    return {row.split()[0]: row for row in rows}


def test_the_workers_table_shows_each_workers_state_and_device(farm):
    """What an operator drains is seen drained: the state the Workers page and
    renderfarm_workers{state} show (idle, busy, draining, stalled), and the device."""
    name = farm.cpu_worker()
    assert workers_table(farm)[name].split()[1:4] == ["cpu", "idle", "cpu"]
    farm.client.drain(name)
    try:
        assert workers_table(farm)[name].split()[2] == "draining"  # at once, not at its beat
    finally:
        farm.client.drain(name, draining=False)
    assert workers_table(farm)[name].split()[2] == "idle"


def test_a_workers_heartbeat_follows_its_job_starting_and_ending_not_its_interval(farm):
    """Busy while it runs a job and idle once it ends, as the fleet shows it, even with a
    heartbeat interval longer than the whole job."""
    usual = farm.cpu_worker()
    farm.client.drain(usual)  # the job goes to the new worker
    try:
        with farm.worker("cpu", env={"RENDERFARM_HEARTBEAT_S": "60"}) as proc:
            name = f"cpu-{proc.pid}@{socket.gethostname()}"
            wait_until(lambda: name in fleet(farm), timeout=120)
            spec = {"model": "demo-sd15", "width": 128, "height": 128, "steps": 40}
            job = farm.submit(prompt="beats at its ends", hardware="cpu", **spec)
            wait_until(lambda: fleet(farm)[name]["current_job"] == job["id"], timeout=30)
            done = farm.wait(job["id"])
            assert (done["status"], done["worker"]) == ("succeeded", name)
            wait_until(lambda: fleet(farm)[name]["current_job"] is None, timeout=30)
            assert workers_table(farm)[name].split()[2] == "idle"
    finally:
        farm.client.drain(usual, draining=False)


def test_stopped_and_killed_workers_leave_the_fleet(farm, tmp_path):
    env = {**farm.env, "RENDERFARM_HEARTBEAT_S": "0.5"}
    before = set(fleet(farm))
    polite = localfarm.start_worker("cpu", env, log=tmp_path / "polite.log")
    killed = localfarm.start_worker("cpu", env, log=tmp_path / "killed.log")
    try:
        wait_until(lambda: len(set(fleet(farm)) - before) == 2, timeout=120)
        new = set(fleet(farm)) - before
        polite_name = next(n for n in new if n.startswith(f"cpu-{polite.pid}@"))
        polite.send_signal(signal.SIGTERM)  # warm shutdown says goodbye at once
        polite.wait(30)
        assert polite_name not in fleet(farm)

        killed.kill()  # no goodbye: the heartbeat ages out after three missed intervals
        killed.wait(10)
        started = time.monotonic()
        wait_until(lambda: set(fleet(farm)) == before, timeout=10)
        assert time.monotonic() - started <= 2.5
    finally:
        localfarm.stop(polite, killed)


def test_a_worker_does_not_inherit_a_drain_left_under_its_name(farm, tmp_path):
    """A container restarted in its pod has the same host name and often the same pid, hence
    the same worker name: a drain asked of the process before it is not the new one's."""
    from scheduler.fleet import is_draining
    from shared import keys

    before = set(fleet(farm))
    worker = localfarm.start_worker("cpu", farm.env, log=tmp_path / "same-name.log")
    name = f"cpu-{worker.pid}@{socket.gethostname()}"
    farm.redis.set(keys.drain(name), 1)  # as the earlier process's drain left it
    try:
        wait_until(lambda: name in set(fleet(farm)) - before, timeout=120)
        assert not is_draining(farm.redis, name)
        assert fleet(farm)[name]["draining"] is False
    finally:
        localfarm.stop(worker)


def test_a_worker_told_to_preload_a_model_the_store_lacks_stops_with_the_reason(farm):
    """`--preload` with a typo: the worker stops before it takes a job, as one refusing its
    device does (exit 2, the reason, no traceback)."""
    done = subprocess.run(
        [sys.executable, "-m", "renderfarm", "worker", "--preload", "no-such-model"],
        env={**os.environ, **farm.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        "renderfarm worker: --preload no-such-model: checkpoint 'no-such-model' is not in this "
        "worker's model store" in done.stderr
    ), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
