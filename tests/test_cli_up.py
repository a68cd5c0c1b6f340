"""`renderfarm up` (the README's first command) brings up a farm, and Ctrl-C stops all of it."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
from PIL import Image

from renderfarm import localfarm
from shared.client import FarmClient

LONG = {"model": "demo-sd15", "width": 256, "height": 256, "steps": 150}
# A lost attempt's lease lapses in 3 s, not 10: the tests that cut a job off wait less.
QUICK_LEASE = {"RENDERFARM_HEARTBEAT_S": "0.5", "RENDERFARM_LEASE_S": "3"}


def renderfarm(cwd, env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`renderfarm ARGS` as a real process in `cwd`, its environment `env`."""
    return subprocess.run(
        [sys.executable, "-m", "renderfarm", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_up(
    models_dir, tmp_path, extra_env: dict | None = None, **popen
) -> tuple[subprocess.Popen, dict, int, list[str]]:
    """`renderfarm up` in tmp_path on free ports, once it says it is up: the process, its
    environment (`extra_env` added), the dashboard's port and what it printed."""
    redis_port, port = localfarm.free_port(), localfarm.free_port()
    env = {
        **os.environ,
        "RENDERFARM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RENDERFARM_MODELS_DIR": str(models_dir),
        **(extra_env or {}),
    }
    env.pop("RENDERFARM_STORAGE_URL", None)  # the default: a local folder
    up = subprocess.Popen(
        [sys.executable, "-m", "renderfarm", "up", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
    said = []
    for line in up.stdout:
        said.append(line)
        if "renderfarm is up" in line:
            return up, env, port, said
    raise AssertionError(f"up exited with {up.wait()}: {''.join(said)}")


def killed_if_left(up: subprocess.Popen) -> None:
    """A test that failed before `up` stopped: it and its Redis (in a session of its own)."""
    if up.poll() is None:
        for child in psutil.Process(up.pid).children(recursive=True):
            child.kill()
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()


def test_up_runs_jobs_with_local_storage_and_one_ctrl_c_stops_all_after_the_job_running(
    models_dir, tmp_path
):
    """The README's farm: a job submitted with `renderfarm submit` as a script would, its
    images stored in var/. Then a terminal's Ctrl-C (it reaches every process of the group)
    with a job running: `up` waits for it (about 16 s here, longer than the 10 s it once gave
    every process before it killed them), then stops everything, that job's images stored."""
    up, env, port, said = start_up(models_dir, tmp_path, start_new_session=True)
    try:
        # A local admin on first start: its password shown once, its token in a private file.
        assert any("local admin account: name admin, password " in line for line in said)
        token_file = tmp_path / "var" / "renderfarm.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "var" / "renderfarm.api").read_text() == f"http://127.0.0.1:{port}\n"
        children = psutil.Process(up.pid).children(recursive=True)
        assert {"redis-server", "worker", "dashboard"} <= {
            word
            for c in children
            for word in ("redis-server", "worker", "dashboard")
            if word in " ".join(c.cmdline())
        }

        # Submit through the CLI client, as a script would.
        out = renderfarm(
            tmp_path,  # beside `up`: the token file it wrote signs the client in
            env,
            "submit",
            "a quiet harbour",  # no --api: the address `up` wrote beside the token
            "--width",
            "64",
            "--height",
            "64",
            "--steps",
            "3",
            "--seed",
            "5",
            "--out",
            str(tmp_path / "got"),
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        job_id = out.stdout.splitlines()[0]
        assert Image.open(tmp_path / "got" / f"{job_id}-0.png").size == (64, 64)
        stored = tmp_path / "var" / "outputs" / "jobs" / job_id / "1"
        assert sorted(p.name for p in stored.iterdir()) == ["image-0.png", "manifest.json"]
        assert (tmp_path / "var" / "redis" / "appendonlydir").is_dir(), "persistence is on"

        with FarmClient(f"http://127.0.0.1:{port}", token_file.read_text().strip()) as client:
            job = client.submit({**LONG, "width": 384, "height": 384, "prompt": "a long render"})
            assert client.wait(job["id"], 120, until={"running"})["status"] == "running"
        os.killpg(up.pid, signal.SIGINT)
        said, _ = up.communicate(timeout=180)
    finally:
        killed_if_left(up)
    assert up.returncode == 0 and "a job in progress finishes first" in said, said
    assert "stopping now" not in said and "Traceback" not in said, said
    stored = tmp_path / "var" / "outputs" / "jobs" / job["id"] / "1"
    assert stored.is_dir(), "the job was cut off"
    assert sorted(p.name for p in stored.iterdir()) == ["image-0.png", "manifest.json"]
    assert not any(c.is_running() and c.status() != "zombie" for c in children)
    assert not localfarm.redis_alive(env["RENDERFARM_REDIS_URL"])
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_up_with_the_model_store_in_s3_names_that_store(s3_env, tmp_path):
    """With RENDERFARM_MODELS_URL the farm's models are the bucket's: `up` says so, and
    writes no demo models into a folder nothing reads."""
    store = "s3://renders/up-models"
    up, _, _, said = start_up(
        tmp_path / "var" / "models", tmp_path, {**s3_env, "RENDERFARM_MODELS_URL": store}
    )
    try:
        assert any(line.startswith(f"model store {store}") for line in said), "".join(said)
        assert not any("new demo models" in line for line in said), "".join(said)
        assert not (tmp_path / "var" / "models").exists()
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0


def test_ctrl_c_twice_stops_the_farm_at_once_and_loses_no_job(models_dir, tmp_path):
    """The first Ctrl-C lets the worker finish its job, a second stops waiting for it.
    Everything ends, without a traceback, and the job interrupted is not failed: the next
    `up` runs it to the end."""
    up, env, port, _ = start_up(models_dir, tmp_path, QUICK_LEASE, start_new_session=True)
    token = (tmp_path / "var" / "renderfarm.token").read_text().strip()
    try:
        with FarmClient(f"http://127.0.0.1:{port}", token) as client:
            job = client.submit({**LONG, "prompt": "a long render"})
            assert client.wait(job["id"], 120, until={"running"})["status"] == "running"
        children = psutil.Process(up.pid).children(recursive=True)
        os.killpg(up.pid, signal.SIGINT)
        for line in up.stdout:  # the worker is letting its job finish
            if "stopping renderfarm" in line:
                break
        assert up.poll() is None, "up did not wait for the worker's job"
        time.sleep(0.5)
        os.killpg(up.pid, signal.SIGINT)
        rest, _ = up.communicate(timeout=60)
    finally:
        killed_if_left(up)
    assert up.returncode == 0, rest
    assert "stopping now" in rest and "Traceback" not in rest, rest
    assert not any(c.is_running() and c.status() != "zombie" for c in children)
    assert not localfarm.redis_alive(env["RENDERFARM_REDIS_URL"])

    # The same var/: Redis's data, the token.
    again, _, port, _ = start_up(models_dir, tmp_path, QUICK_LEASE)
    try:
        with FarmClient(f"http://127.0.0.1:{port}", token) as client:
            done = client.wait(job["id"], 180)
        assert (done["status"], done["error"]) == ("succeeded", None), done
        assert done["attempts"] == 2  # the interrupted attempt, then the one that finished
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=60) == 0


def _workers(up: subprocess.Popen) -> list[psutil.Process]:
    """`up`'s live worker processes."""
    found = []
    for child in psutil.Process(up.pid).children(recursive=True):
        try:
            if "worker" in child.cmdline():
                found.append(child)
        except psutil.Error:  # gone, or a zombie not yet reaped
            pass
    return found


def _next_worker(up: subprocess.Popen, seen: set[int], timeout: float = 60) -> psutil.Process:
    """A worker process of `up`'s not in `seen` (started again), once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and up.poll() is None:
        fresh = [w for w in _workers(up) if w.pid not in seen]
        if fresh:
            return fresh[0]
        time.sleep(0.1)
    raise AssertionError(f"no new worker (up: {up.poll()})")


def test_a_worker_killed_mid_job_is_started_again_and_its_job_finishes(models_dir, tmp_path):
    """The kernel's OOM killer takes the worker in the middle of a job: `up` starts it again,
    says so, the rest of the farm carries on, and the job runs to the end on its next attempt
    (once the lost attempt's lease lapses)."""
    up, env, port, _ = start_up(models_dir, tmp_path, QUICK_LEASE)
    token = (tmp_path / "var" / "renderfarm.token").read_text().strip()
    try:
        with FarmClient(f"http://127.0.0.1:{port}", token) as client:
            job = client.submit({**LONG, "prompt": "a render cut short"})
            assert client.wait(job["id"], 120, until={"running"})["status"] == "running"
            (first,) = _workers(up)
            first.kill()
            for line in up.stdout:
                if "the cpu worker exited (killed by SIGKILL); starting it again" in line:
                    break
            threading.Thread(target=up.stdout.read, daemon=True).start()  # the pipe never fills
            again = _next_worker(up, {first.pid})
            done = client.wait(job["id"], 180)
        assert (done["status"], done["error"]) == ("succeeded", None), done
        assert done["attempts"] == 2
        lost = done["attempts_history"][0]
        assert lost["outcome"] == "requeued" and "lost its worker" in lost["error"], lost
        assert done["worker"] == f"cpu-{again.pid}@{socket.gethostname()}"
        assert up.poll() is None, "the farm stopped"
    finally:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0


def test_a_worker_that_keeps_exiting_at_start_stops_the_farm(models_dir, tmp_path):
    """A process that dies each time soon after it starts is not started forever: after three
    such exits `up` stops everything and names it."""
    up, env, _, _ = start_up(models_dir, tmp_path)
    children = psutil.Process(up.pid).children(recursive=True)
    seen: set[int] = set()
    try:
        # Three exits within 30 s of a start; more if this machine took long to come up.
        while up.poll() is None and len(seen) < 6:
            try:
                worker = _next_worker(up, seen)
            except AssertionError:
                break  # up gave up meanwhile
            seen.add(worker.pid)
            worker.kill()
        rest, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 1, rest
    assert rest.count("the cpu worker exited (killed by SIGKILL); starting it again") >= 2, rest
    assert (
        "the cpu worker exited 3 times within 30 s of starting (killed by SIGKILL); "
        "stopping the farm" in rest
    ), rest
    assert not any(c.is_running() and c.status() != "zombie" for c in children)
    assert not localfarm.redis_alive(env["RENDERFARM_REDIS_URL"])


@pytest.mark.parametrize("command", ["up", "dashboard"])
def test_a_taken_port_is_refused_before_anything_starts(command, tmp_path):
    """A second `up` on the same port would join the first farm's Redis and take its
    dashboard's answers for its own: it stops at once, naming the port, and starts nothing."""
    redis_url = f"redis://127.0.0.1:{localfarm.free_port()}/0"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**os.environ, "RENDERFARM_REDIS_URL": redis_url}
        out = renderfarm(tmp_path, env, command, "--port", str(port))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr
    if command == "up":
        assert "is a farm already up? --port picks another" in out.stderr
        assert not (tmp_path / "var").exists(), "it started something"
        assert not localfarm.redis_alive(redis_url)


def test_an_outage_is_logged_once_and_ctrl_c_ends_any_command_without_a_traceback(tmp_path):
    """The scheduler with its Redis not there yet: the first failure with its traceback,
    then a line per retry, and the outage's end once Redis is up; interrupted (as a worker
    still importing torch would be), it exits 130 and prints no traceback."""
    port = localfarm.free_port()
    env = {**os.environ, "RENDERFARM_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "renderfarm", "scheduler"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    redis = None
    guard = threading.Timer(120, proc.kill)  # a line that never comes ends the reading
    guard.start()
    try:
        said, retries = [], []  # the lines, and where the dispatcher's retries are among them
        for line in proc.stdout:
            said.append(line)
            if "Redis unavailable; retrying (for " in line:
                retries.append(len(said))
                if len(retries) == 2:
                    break
        first = "".join(said[: retries[0]])
        assert "WARNING Redis unavailable; retrying\n" in first and "Traceback" in first
        later = said[retries[0] :]  # seconds of retries, the notifier's too: no traceback
        assert not any("Traceback" in x for x in later), "".join(said)
        redis = localfarm.start_redis(port, tmp_path / "redis")
        for line in proc.stdout:
            if "the dispatcher reaches Redis again after" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        guard.cancel()
        localfarm.stop(proc, redis)
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest, rest


# Each client command waits out its retries (7.75 s) before it says so: they run together.
NO_FARM = "cannot reach the farm at http://127.0.0.1:{api} (is it up? --api)"
NO_REDIS = "cannot reach Redis at redis://127.0.0.1:{redis}/0 (RENDERFARM_REDIS_URL)"
NOT_UP = (
    (["submit", "a lighthouse"], NO_FARM),
    (["cancel", "some-job"], NO_FARM),
    (["workers"], NO_REDIS),
    (["users", "list"], NO_REDIS),
)


def test_a_farm_that_is_not_up_is_named_not_a_traceback(tmp_path):
    api, redis_port = localfarm.free_port(), localfarm.free_port()
    env = {
        **os.environ,
        "RENDERFARM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RENDERFARM_TOKEN": "rf_not-checked-before-the-connection",
    }
    running = []
    for command, said in NOT_UP:
        client = ["--api", f"http://127.0.0.1:{api}"] if command[0] in ("submit", "cancel") else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "renderfarm", *command, *client],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        running.append((command, said, proc))
    for command, said, proc in running:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (command, out + err)
        assert f"renderfarm {command[0]}: " + said.format(api=api, redis=redis_port) in err
        assert "Traceback" not in err, err
        assert out == "", f"{command}: nothing half-printed (a table's header) before the error"


def test_output_piped_to_a_reader_that_stops_early_ends_without_a_traceback(models_dir, tmp_path):
    """`renderfarm models list | head -1`: the reader goes away, and the command ends quietly
    with the status a command killed by SIGPIPE has (128 + 13), not a BrokenPipeError."""
    env = {**os.environ, "RENDERFARM_MODELS_DIR": str(models_dir)}
    env.pop("RENDERFARM_MODELS_URL", None)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "renderfarm", "models", "list", "--json"],
            cwd=tmp_path, env=env, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == 141, proc.stderr
