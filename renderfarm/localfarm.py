"""Starting farm processes on this machine: used by `renderfarm up` and by the tests.

Each service is a real process (redis-server, a worker, the dashboard) started the
way an operator would start it, so the tests exercise what users run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from redis import Redis

from shared.config import Settings, redis_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")


def redis_alive(settings: Settings | str) -> bool:
    """Whether the farm's Redis answers: its Settings, or a Redis URL (a `sentinel://` one
    is asked for the master named by RENDERFARM_REDIS_SENTINEL_MASTER)."""
    if isinstance(settings, str):
        settings = Settings(redis_url=settings)
    try:
        client = redis_client(settings)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def start_redis(port: int, data_dir: Path, replica_of: int | None = None) -> subprocess.Popen:
    """A real redis-server on loopback with persistence on and no eviction; with
    `replica_of`, a replica of the one on that loopback port."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    data_dir.mkdir(parents=True, exist_ok=True)
    args = [
        exe,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--maxmemory-policy",
        "noeviction",
        "--save",
        "",
        "--protected-mode",
        "yes",
    ]
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        # Its own session: a Ctrl-C in the terminal reaches the farm's processes, which
        # still need Redis to shut down cleanly; whoever started it stops it last.
        start_new_session=True,
    )
    _ready(proc, lambda: redis_alive(f"redis://127.0.0.1:{port}/0"), 10, "redis-server")
    return proc


def start_sentinel(
    port: int, master_port: int, data_dir: Path, master: str = "mymaster", down_ms: int = 1000
) -> subprocess.Popen:
    """A real redis-sentinel on loopback watching the master on `master_port` as `master`
    (quorum 1: it decides alone; it rewrites its own config file, kept in `data_dir`)."""
    exe = shutil.which("redis-sentinel")
    if exe is None:
        raise RuntimeError("redis-sentinel is not installed (apt-get install redis-sentinel)")
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {data_dir}\n"
        f"sentinel monitor {master} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {master} {down_ms}\n"
        f"sentinel failover-timeout {master} {max(down_ms * 10, 5000)}\n"
    )
    proc = subprocess.Popen([exe, str(conf)], stdout=subprocess.DEVNULL, start_new_session=True)

    def watching() -> bool:
        with Redis("127.0.0.1", port=port, socket_timeout=2) as sentinel:
            return bool(sentinel.execute_command("SENTINEL", "MASTER", master))

    wait_for(watching, 10, "redis-sentinel", proc)
    return proc


def _renderfarm(*args: str, env: dict[str, str], log: Path | None) -> subprocess.Popen:
    out = open(log, "ab") if log else None  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [sys.executable, "-m", "renderfarm", *args],
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
    )


def start_worker(
    hardware: str, env: dict[str, str], log: Path | None = None, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    return _renderfarm("worker", "--hardware", hardware, *extra, env=env, log=log)


def start_scheduler(env: dict[str, str], log: Path | None = None) -> subprocess.Popen:
    return _renderfarm("scheduler", env=env, log=log)


def start_dashboard(
    host: str, port: int, env: dict[str, str], log: Path | None = None
) -> subprocess.Popen:
    proc = _renderfarm("dashboard", "--host", host, "--port", str(port), env=env, log=log)
    url = f"http://{host}:{port}/healthz"
    _ready(proc, lambda: urllib.request.urlopen(url, timeout=1).status == 200, 30, "dashboard")
    return proc


def _ready(proc: subprocess.Popen, check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a process just started to answer; one that does not in time is stopped, so
    no caller is left with a process it never got."""
    try:
        wait_for(check, timeout, what, proc)
    except BaseException:
        stop(proc)
        raise


def stop(*procs: subprocess.Popen | None, timeout: float | None = 10) -> None:
    """SIGTERM to each of `procs`, then each is killed if it has not exited within `timeout`
    seconds (None: waited for, however long it takes)."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
    for proc in procs:
        if proc is None:
            continue
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Headless Chromium for the browser tests and the screenshots: without these flags it keeps
# calling out to the internet, which a closed machine refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
