"""A farm for fault tests: restartable Redis, an S3 endpoint behind a pausable TCP proxy,
a scheduler and two workers with short heartbeats and leases, restarted if they die."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from pathlib import Path

from redis import Redis

from renderfarm import localfarm
from shared.client import FarmClient
from shared.vocabulary import FINAL
from tests.signin import account_token, ensure_account


class TcpProxy:
    """Forwards a loopback port to another; `pause()` refuses connections (an outage)."""

    def __init__(self, target_port: int) -> None:
        self.port = localfarm.free_port()
        self.target_port = target_port
        self._server: socketserver.ThreadingTCPServer | None = None
        self._open: set[socket.socket] = set()
        self.resume()

    def _handler(self):
        target, open_ = self.target_port, self._open

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(("127.0.0.1", target))
                open_.update((self.request, upstream))
                pair = [(self.request, upstream), (upstream, self.request)]
                threads = [threading.Thread(target=_copy, args=p, daemon=True) for p in pair]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

        return Pipe

    def resume(self) -> None:
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def pause(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        for s in list(self._open):  # cut the connections in flight too
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._open.clear()


def pid_of(worker_name: str) -> int:
    """The process id in a worker's name (`cpu-<pid>@<host>`)."""
    return int(worker_name.split("@")[0].rsplit("-", 1)[1])


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class FaultFarm:
    def __init__(self, root: Path, models_dir: Path, s3_env: dict[str, str], workers: int = 2):
        self.root = root
        self.redis_port = localfarm.free_port()
        self.redis_dir = root / "redis"
        self.redis_proc = localfarm.start_redis(self.redis_port, self.redis_dir)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis = Redis.from_url(self.redis_url)
        self.s3_direct = s3_env  # the S3 server itself, not through the proxy
        endpoint_port = int(s3_env["RENDERFARM_S3_ENDPOINT_URL"].rsplit(":", 1)[1])
        self.s3_proxy = TcpProxy(endpoint_port)
        self.env = {
            **s3_env,
            "RENDERFARM_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_proxy.port}",
            "RENDERFARM_REDIS_URL": self.redis_url,
            "RENDERFARM_STORAGE_URL": "s3://renders/faults",
            "RENDERFARM_MODELS_DIR": str(models_dir),
            "RENDERFARM_HEARTBEAT_S": "0.5",
            "RENDERFARM_LEASE_S": "2",
            "RENDERFARM_MAX_ATTEMPTS": "2",
            "RENDERFARM_AFFINITY_WAIT_S": "1",
            "RENDERFARM_FAULT_KILL_PROMPT": "poison",
            "RENDERFARM_FAULT_STALL_PROMPT": "stall",
            # Above the Redis client's 5 s connect timeout: a step waiting on a restarting
            # Redis is slow, not stalled.
            "RENDERFARM_STALL_S": "12",
        }
        self.logs = root / "logs"
        self.logs.mkdir()
        self.scheduler = localfarm.start_scheduler(self.env, log=self.logs / "scheduler.log")
        self.workers = [self._worker(i) for i in range(workers)]
        self.port = localfarm.free_port()
        self.dashboard = localfarm.start_dashboard(
            "127.0.0.1", self.port, self.env, log=self.logs / "dashboard.log"
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = FarmClient(self.url, account_token(self.redis, "admin", "admin"))
        self._supervise = True
        self._supervisor = threading.Thread(target=self._restart_dead_workers, daemon=True)
        self._supervisor.start()
        self.wait_workers(workers)

    def _worker(self, index: int):
        return localfarm.start_worker("cpu", self.env, log=self.logs / f"worker{index}.log")

    def _restart_dead_workers(self) -> None:
        """What systemd or Kubernetes would do: start a worker again when it dies."""
        while self._supervise:
            for i, proc in enumerate(self.workers):
                if proc.poll() is not None:
                    self.workers[i] = self._worker(i)
            time.sleep(0.2)

    def live(self) -> list[dict]:
        return self.client.workers()

    def wait_workers(self, count: int, timeout: float = 120) -> list[dict]:
        """Wait until the fleet is exactly `count` running worker processes: a killed worker's
        heartbeat lingers for up to three intervals, and the scheduler may still send it a
        job (which the reaper then requeues), so a test counting on busy workers waits it out.
        """
        deadline = time.monotonic() + timeout
        while True:
            running = {p.pid for p in self.workers if p.poll() is None}
            live = self.live()
            if len(running) == count and {pid_of(w["name"]) for w in live} == running:
                return live
            assert time.monotonic() < deadline, f"live {[w['name'] for w in live]}, {running=}"
            time.sleep(0.2)

    def submit(self, *, owner: str | None = None, priority: str | None = None, **spec) -> dict:
        """Submit as the admin; on behalf of `owner` (a member, created if new) if given."""
        if owner is not None:
            ensure_account(self.redis, owner)
        return self.client.submit(spec, owner=owner, priority=priority)

    def job(self, job_id: str) -> dict:
        return self.client.job(job_id)

    def wait(self, job_id: str, timeout: float = 180, until=FINAL) -> dict:
        return self.client.wait(job_id, timeout, until=until)

    def restart_redis(self, down_s: float) -> None:
        localfarm.stop(self.redis_proc)
        time.sleep(down_s)
        self.redis_proc = localfarm.start_redis(self.redis_port, self.redis_dir)

    def close(self) -> None:
        self._supervise = False
        self._supervisor.join()
        self.client.close()
        localfarm.stop(self.dashboard, self.scheduler, *self.workers, self.redis_proc)
        self.s3_proxy.pause()
