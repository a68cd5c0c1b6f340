"""The dashboard on several processes (`RENDERFARM_HTTP_PROCESSES`, dashboard/server.py):
one port, each process able to answer any request (a sign-in made through one holds in the
other), a dead one replaced, none left behind when the command stops or is killed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from redis import Redis

from renderfarm import localfarm
from tests.conftest import empty_db
from tests.signin import ensure_account

PASSWORD = "a long password"


def env_for(redis_url: str, models_dir: Path, tmp_path: Path, processes: int) -> dict[str, str]:
    return {
        "RENDERFARM_REDIS_URL": redis_url,
        "RENDERFARM_MODELS_DIR": str(models_dir),
        "RENDERFARM_STORAGE_URL": f"file://{tmp_path / 'outputs'}",
        "RENDERFARM_HTTP_PROCESSES": str(processes),
    }


@pytest.fixture
def db_url(redis_url: str) -> str:
    return empty_db(redis_url, 4)


@pytest.fixture
def served(db_url, models_dir, tmp_path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`renderfarm dashboard` with two HTTP processes, and its URL."""
    port = localfarm.free_port()
    env = env_for(db_url, models_dir, tmp_path, 2)
    proc = localfarm.start_dashboard("127.0.0.1", port, env, log=tmp_path / "dashboard.log")
    yield proc, f"http://127.0.0.1:{port}"
    localfarm.stop(proc)


def servers(proc: subprocess.Popen, count: int = 2, timeout: float = 20) -> list[psutil.Process]:
    """The command's server processes, once there are `count` of them listening."""
    deadline = time.monotonic() + timeout
    while True:
        children = psutil.Process(proc.pid).children()
        listening = [c for c in children if any(k.status == "LISTEN" for k in _tcp(c))]
        if len(children) == count and len(listening) == count:
            return children
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(listening)} of {len(children)} processes listening")
        time.sleep(0.1)


def _tcp(process: psutil.Process) -> list:
    try:
        return process.net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return []


def browser() -> requests.Session:
    """A browser that opens a connection per request, so any process may take each one."""
    session = requests.Session()
    session.headers["Connection"] = "close"
    return session


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pids: list[int], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def closed(url: str, timeout: float = 10) -> bool:
    """Whether connections to `url` are refused within `timeout` s. (A process's main thread
    can be a zombie while its other threads, still exiting, hold the socket a moment longer.)"""
    host, port = url.removeprefix("http://").split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_each_process_serves_the_port_and_a_sign_in_through_one_holds_in_the_other(served, db_url):
    proc, url = served
    one, other = servers(proc)
    ensure_account(Redis.from_url(db_url), "pat").set_password("pat", PASSWORD)
    pat = browser()
    other.suspend()  # only `one` can take a connection now
    try:
        form = pat.get(f"{url}/login", timeout=10).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        signed = pat.post(
            f"{url}/login",
            data={"name": "pat", "password": PASSWORD, "csrf_token": csrf},
            allow_redirects=False,
            timeout=10,
        )
        assert signed.status_code == 302, signed.text
        page = pat.get(f"{url}/", timeout=10).text
        token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    finally:
        other.resume()
    one.suspend()  # and now only `other`
    try:
        assert pat.get(f"{url}/api/v1/me", timeout=10).json()["name"] == "pat"
        job = {"model": "demo-sd15", "prompt": "a lighthouse", "width": 64, "height": 64}
        posted = pat.post(
            f"{url}/api/v1/jobs", json=job, headers={"X-CSRFToken": token}, timeout=10
        )
        assert posted.status_code == 202, posted.text
        assert pat.get(url + posted.headers["Location"], timeout=10).json()["owner"] == "pat"
    finally:
        one.resume()


def test_a_dead_process_is_replaced_and_stopping_the_command_stops_them_all(served):
    proc, url = served
    victim, survivor = servers(proc)
    victim.kill()
    # Not before it is dead: just after the signal it may still be listed, listening.
    assert gone([victim.pid]), "a killed server process lived on"
    replaced = servers(proc)
    assert victim.pid not in {p.pid for p in replaced} and survivor in replaced
    for _ in range(6):
        assert browser().get(f"{url}/healthz", timeout=10).json() == {"ok": True, "redis": True}
    proc.terminate()
    assert proc.wait(40) == 0  # a graceful stop (tests/test_server_stop.py)
    assert gone([p.pid for p in replaced]), "a server process outlived the command"
    assert closed(url)


def test_server_processes_exit_when_the_command_is_killed_outright(served):
    proc, url = served
    children = [p.pid for p in servers(proc)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert gone(children), "an orphaned server process kept serving"
    assert closed(url)


def test_a_process_that_cannot_start_stops_the_command(models_dir, tmp_path):
    """Redis unreachable: the command exits non-zero rather than starting processes forever."""
    closed = localfarm.free_port()
    env = env_for(f"redis://127.0.0.1:{closed}/0", models_dir, tmp_path, 2)
    port = localfarm.free_port()
    command = [sys.executable, "-m", "renderfarm", "dashboard", "--port", str(port)]
    done = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "could not start" in done.stderr and "ConnectionError" in done.stderr
