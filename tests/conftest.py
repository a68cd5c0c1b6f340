"""Real components for the tests: redis-server, moto's S3 server, worker and dashboard processes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from redis import Redis

from renderfarm import localfarm
from shared.client import FarmClient
from shared.config import Settings
from tests.signin import account_token, ensure_account

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BUCKET = "renders"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    port = localfarm.free_port()
    proc = localfarm.start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    localfarm.stop(proc)


def empty_db(redis_url: str, db: int) -> str:
    """The URL of database `db` of the tests' Redis, emptied first."""
    url = redis_url.rsplit("/", 1)[0] + f"/{db}"
    Redis.from_url(url).flushdb()
    return url


def settings_on_db(redis_url: str, db: int, models_dir: Path, tmp_path: Path) -> Settings:
    """Settings for in-process tests on a Redis database of their own (emptied first) and
    file storage in `tmp_path`."""
    url = empty_db(redis_url, db)
    return Settings(redis_url=url, models_dir=models_dir, storage_url=f"file://{tmp_path}")


@pytest.fixture
def app_client(redis_url, models_dir, tmp_path):
    """`make(account, **settings)`: Flask's test client on the real app (its own Redis
    database, file storage), signed in with a token of `account` (a member)."""
    from dashboard.app import create_app

    def make(account: str, **overrides):
        settings = settings_on_db(redis_url, 3, models_dir, tmp_path)
        client = create_app(settings.model_copy(update=overrides)).test_client()
        token = account_token(Redis.from_url(settings.redis_url), account)
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return client

    return make


@pytest.fixture
def app_rules(redis_url, models_dir, tmp_path) -> list:
    """The routes of the app as `create_app` builds it (static files left out): what the
    route checks compare their documents with, whatever blueprints it registers."""
    from dashboard.app import create_app

    app = create_app(settings_on_db(redis_url, 3, models_dir, tmp_path))
    return [rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from worker.demo_models import write_demo_models

    root = tmp_path_factory.mktemp("models")
    write_demo_models(root)
    # A model whose folder looks right but whose weights are garbage: it lists, then fails to load.
    broken = root / "checkpoints" / "broken-model"
    broken.mkdir()
    index = root / "checkpoints" / "demo-sd15" / "model_index.json"
    (broken / "model_index.json").write_text(index.read_text())
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (broken / sub).mkdir()
    (broken / "unet" / "config.json").write_text("{not json")
    return root


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = localfarm.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_env(s3_endpoint) -> dict[str, str]:
    env = {
        "RENDERFARM_S3_ENDPOINT_URL": s3_endpoint,
        "RENDERFARM_S3_ACCESS_KEY_ID": "testing",
        "RENDERFARM_S3_SECRET_ACCESS_KEY": "testing",
        "RENDERFARM_S3_REGION": "us-east-1",
    }
    s3_client(env).create_bucket(Bucket=BUCKET)
    return env


def s3_client(env: dict[str, str]):
    return boto3.client(
        "s3",
        endpoint_url=env["RENDERFARM_S3_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@dataclass
class Farm:
    """A running farm: its processes, its Redis, and `client` for its REST API. `submit`,
    `job` and `wait` are the client's, with the spec as keywords and the logs named on a
    timeout; a test that checks a refused request's status uses `client.request`."""

    url: str
    env: dict[str, str]
    redis: Redis
    logs: Path
    procs: list = field(default_factory=list)
    client: FarmClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = self.as_account("admin", "admin")

    def as_account(self, name: str, role: str = "member") -> FarmClient:
        """A client signed in with a new token of `name` (created with `role` if new)."""
        return FarmClient(self.url, account_token(self.redis, name, role), timeout=10)

    def submit(self, *, owner: str | None = None, priority: str | None = None, **spec) -> dict:
        """Submit as the admin; on behalf of `owner` (a member, created if new) if given."""
        if owner is not None:
            ensure_account(self.redis, owner)
        return self.client.submit(spec, owner=owner, priority=priority)

    def redis_workers(self) -> list[dict]:
        from scheduler.fleet import live_workers

        return live_workers(self.redis)

    @contextmanager
    def worker(
        self, hardware: str, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
    ) -> Iterator[subprocess.Popen]:
        """One more worker of `hardware` in this farm, taking jobs until the block ends."""
        log = self.logs / f"{hardware}-worker.log"
        proc = localfarm.start_worker(hardware, {**self.env, **(env or {})}, log=log, extra=extra)
        try:
            localfarm.wait_for(
                lambda: any(w["hardware"] == hardware for w in self.redis_workers()),
                180,
                f"{hardware} worker",
                proc,
            )
            yield proc
        finally:
            localfarm.stop(proc)

    def cpu_worker(self, timeout: float = 60) -> str:
        """The name of the farm's CPU worker, once its heartbeat is there."""
        found: list[str] = []
        localfarm.wait_for(
            lambda: (
                found.extend(w["name"] for w in self.redis_workers() if w["hardware"] == "cpu")
                or found
            ),
            timeout,
            "the farm's cpu worker",
        )
        return found[0]

    def beat_after(self, job: dict, timeout: float = 30) -> dict:
        """The heartbeat of the worker that ran `job`, written after the job finished: a beat
        is up to one interval old, and several short jobs fit in one interval."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker in self.redis_workers():
                if worker["name"] == job["worker"] and worker["seen_at"] > job["finished_at"]:
                    return worker
            time.sleep(0.1)
        raise TimeoutError(f"no heartbeat from {job['worker']} after job {job['id']}")

    def job(self, job_id: str) -> dict:
        return self.client.job(job_id)

    def wait(self, job_id: str, timeout: float = 60) -> dict:
        try:
            return self.client.wait(job_id, timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; see {self.logs}") from None


@pytest.fixture(scope="session")
def farm(redis_url, models_dir, s3_env, tmp_path_factory) -> Iterator[Farm]:
    """A farm as an operator runs it: one CPU worker and the dashboard, results in S3."""
    logs = tmp_path_factory.mktemp("logs")
    env = {
        **s3_env,
        "RENDERFARM_REDIS_URL": redis_url,
        "RENDERFARM_STORAGE_URL": f"s3://{BUCKET}/farm",
        "RENDERFARM_MODELS_DIR": str(models_dir),
        # Short enough for the tests to see: the events stream's heartbeat, webhook retries.
        "RENDERFARM_EVENTS_HEARTBEAT_S": "1",
        "RENDERFARM_WEBHOOK_BACKOFF_S": "0.2",
        "RENDERFARM_WEBHOOK_ALLOW_PRIVATE": "1",  # the tests' receivers are on loopback
    }
    port = localfarm.free_port()
    scheduler = localfarm.start_scheduler(env, log=logs / "scheduler.log")
    worker = localfarm.start_worker("cpu", env, log=logs / "worker.log")
    dashboard = localfarm.start_dashboard("127.0.0.1", port, env, log=logs / "dashboard.log")
    procs = [scheduler, worker, dashboard]
    farm = Farm(f"http://127.0.0.1:{port}", env, Redis.from_url(redis_url), logs, procs)
    yield farm
    farm.client.close()
    localfarm.stop(*procs)
