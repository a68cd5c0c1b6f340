"""Redis Sentinel: the farm runs on a master and a replica watched by a sentinel, and keeps
every job through a failover.

Real processes only: redis-server (a master and a `--replicaof` replica), redis-sentinel,
and the farm (`renderfarm scheduler`, a CPU worker, the dashboard) on a `sentinel://` URL.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from redis import Redis

from renderfarm import localfarm
from scheduler.pending import PendingJobs
from scheduler.records import JobRecords
from shared import keys
from shared.client import FarmClient
from shared.config import Settings, redis_client
from shared.vocabulary import Hardware, JobStatus
from tests.conftest import BUCKET, s3_client, settings_on_db
from tests.signin import account_token

NO_SENTINEL = (
    "redis-sentinel is not installed (deploy/install.sh installs it; apt-get install "
    "redis-sentinel)"
)


def require_sentinel() -> None:
    if shutil.which("redis-sentinel") is None:
        pytest.skip(NO_SENTINEL)


MASTER = "farm-master"  # not the default name: the setting is what names it
QUICK = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 3}
SLOW = {"model": "demo-sd15", "width": 256, "height": 256, "steps": 40}


@dataclass
class Replicated:
    """A master, its replica and a sentinel on free loopback ports."""

    root: Path
    ports: list[int] = field(default_factory=list)  # the two redis-servers
    servers: dict[int, subprocess.Popen] = field(default_factory=dict)
    sentinel_port: int = 0
    sentinel: subprocess.Popen | None = None

    def start(self) -> Replicated:
        master, replica = localfarm.free_port(), localfarm.free_port()
        self.ports = [master, replica]
        self.servers[master] = localfarm.start_redis(master, self.root / f"redis-{master}")
        self.servers[replica] = localfarm.start_redis(
            replica, self.root / f"redis-{replica}", replica_of=master
        )
        self.sentinel_port = localfarm.free_port()
        self.sentinel = localfarm.start_sentinel(
            self.sentinel_port, master, self.root / "sentinel", MASTER
        )
        self.wait_in_sync()
        return self

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.sentinel_port}/0"

    def settings(self) -> Settings:
        return Settings(redis_url=self.url, redis_sentinel_master=MASTER)

    def ask(self, *command: str):
        with Redis("127.0.0.1", port=self.sentinel_port, socket_timeout=5) as sentinel:
            return sentinel.execute_command(*command)

    def master_port(self) -> int:
        return int(self.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1])

    def wait_in_sync(self, timeout: float = 60) -> None:
        """Until the sentinel knows a replica that is linked to the master and caught up
        (only such a replica can be promoted)."""

        def synced() -> bool:
            master = self.master_port()
            replica = next(p for p in self.ports if p != master)
            with Redis("127.0.0.1", port=replica) as r:
                info = r.info("replication")
            known = self.ask("SENTINEL", "REPLICAS", MASTER)
            return (
                info.get("master_link_status") == "up"
                and info.get("master_port") == master
                and bool(known)
            )

        localfarm.wait_for(synced, timeout, "the replica in sync and known to the sentinel")

    def failover(self, timeout: float = 90) -> int:
        """`SENTINEL FAILOVER`: the replica becomes the master; returns once the old master
        has been turned into the new one's replica. The new master's port."""
        old = self.master_port()
        self.wait_in_sync()
        assert self.ask("SENTINEL", "FAILOVER", MASTER)

        def demoted() -> bool:
            with Redis("127.0.0.1", port=old) as r:
                return self.master_port() != old and r.execute_command("ROLE")[0] == b"slave"

        localfarm.wait_for(demoted, timeout, "the old master demoted")
        return self.master_port()

    def kill_master(self, timeout: float = 90) -> int:
        """SIGKILL the master (a crash: nothing flushed, no goodbye); returns the port of
        the replica the sentinel promoted, once it has."""
        old = self.master_port()
        self.wait_in_sync()
        self.servers[old].kill()
        self.servers[old].wait()
        localfarm.wait_for(lambda: self.master_port() != old, timeout, "a new master")
        return self.master_port()

    def restart(self, port: int) -> None:
        """Start a stopped server again as it was (its own data, no --replicaof): the
        sentinel turns it into the new master's replica."""
        self.servers[port] = localfarm.start_redis(port, self.root / f"redis-{port}")
        self.wait_in_sync()

    def stop(self) -> None:
        localfarm.stop(self.sentinel, *self.servers.values())


@pytest.fixture
def replicated(tmp_path) -> Iterator[Replicated]:
    require_sentinel()
    ha = Replicated(tmp_path).start()
    yield ha
    ha.stop()


@pytest.mark.timeout(180)
def test_a_sentinel_url_gives_a_client_that_follows_the_master(replicated):
    """The one client every farm process uses: after a failover the same client object
    writes to the new master, the records' Lua script still runs there (re-sent on
    NOSCRIPT), and a BRPOP blocked across the failover gets what is pushed after it."""
    client = redis_client(replicated.settings())
    records = JobRecords(client)
    client.hset(keys.job("j1"), mapping={"status": "pending", "attempt": 0, "seq": 1})
    assert records.update("j1", JobStatus.PENDING, progress=0.25)  # loads the script
    assert client.execute_command("ROLE")[0] == b"master"
    first = replicated.master_port()

    got: dict[str, object] = {}

    def blocked() -> None:
        got["value"] = client.brpop(["wake"], timeout=120)

    waiter = threading.Thread(target=blocked)
    waiter.start()
    new = replicated.failover()
    assert new != first
    client.lpush("wake", "after")
    waiter.join(150)
    assert got.get("value") == (b"wake", b"after")

    assert client.connection_pool.master_address == ("127.0.0.1", new)
    assert client.execute_command("ROLE")[0] == b"master"
    with Redis("127.0.0.1", port=new) as direct:
        direct.script_flush()  # as on a server that never ran it: EVALSHA answers NOSCRIPT
        assert records.update("j1", JobStatus.PENDING, progress=0.5)
        assert direct.hget(keys.job("j1"), "progress") == b"0.5"
        assert direct.hget(keys.job("j1"), "seq") == b"3"  # both changes, none lost


def test_bad_sentinel_urls_are_refused_naming_the_setting():
    for url, reason in (
        ("sentinel://", "no host"),
        ("sentinel://h:26379/x", "database"),
        ("sentinel://h:26379;redis://h2:6379", "sentinel://"),
        ("sentinel://:a@h;sentinel://:b@h2", "credentials"),
    ):
        with pytest.raises(ValueError) as err:
            Settings(redis_url=url)
        assert "redis_url" in str(err.value) and reason in str(err.value)
    with pytest.raises(ValueError, match="redis_sentinel_master"):
        Settings(redis_url="sentinel://h:26379", redis_sentinel_master=" ")
    with pytest.raises(ValueError) as err:
        Settings(redis_url="sentinel://:hunter2@h:26379;sentinel://:other@h2")
    assert "hunter2" not in str(err.value)


def test_the_same_attempt_dispatched_twice_runs_only_on_the_worker_the_record_names(
    redis_url, models_dir, tmp_path
):
    """A failover can lose a dispatch that a worker already took from the old master; the
    new master's dispatcher then sends the same attempt number to another worker. The
    worker the record does not name drops the task, and every write fenced by its
    (attempt, worker) is refused; the named worker's go through."""
    from scheduler.control import JobControl
    from scheduler.dispatcher import Dispatcher
    from scheduler.leases import token
    from shared.jobspec import parse_spec
    from worker.runner import JobRunner

    settings = settings_on_db(redis_url, 14, models_dir, tmp_path)
    control = JobControl(settings)
    record, _ = control.submit(parse_spec({"prompt": "twice", **QUICK}, settings))
    assert Dispatcher(settings, celery=control.celery).dispatch_one(
        record, {"name": "w2", "hardware": "cpu"}, warm=False
    )
    job_id, records = record["id"], control.records
    seq = records.get(job_id)["seq"]

    JobRunner(settings, Hardware.CPU, "w1").run(job_id, 1)  # the other dispatch's task
    assert records.get(job_id)["seq"] == seq and records.get(job_id)["status"] == "dispatched"
    assert not records.transition(
        job_id, JobStatus.RUNNING, (JobStatus.DISPATCHED,), token(1, "w1"), worker="w1"
    )
    assert records.transition(
        job_id, JobStatus.RUNNING, (JobStatus.DISPATCHED,), token(1, "w2"), worker="w2"
    )
    assert not records.set_progress(job_id, token(1, "w1"), 0.5)
    assert records.set_progress(job_id, token(1, "w2"), 0.5)
    assert not records.transition(
        job_id, JobStatus.SUCCEEDED, (JobStatus.RUNNING,), token(1, "w1"), progress=1.0
    )
    assert records.get(job_id)["status"] == "running"


# -- a whole farm through a failover ----------------------------------------------------------


@dataclass
class SentinelFarm:
    ha: Replicated
    env: dict[str, str]
    logs: Path
    procs: dict[str, object]
    client: FarmClient
    redis: Redis
    token: str

    def objects(self, job_id: str) -> list[str]:
        listing = s3_client(self.env).list_objects_v2(
            Bucket=BUCKET, Prefix=f"sentinel/jobs/{job_id}/"
        )
        return sorted(o["Key"].split(f"{job_id}/", 1)[1] for o in listing.get("Contents", []))

    def wait(self, job_id: str, timeout: float = 240) -> dict:
        try:
            return self.client.wait(job_id, timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; see {self.logs}") from None

    def running_with_progress(self, job_id: str) -> dict:
        def running() -> bool:
            job = self.client.job(job_id)
            return job["status"] == "running" and job["progress"] > 0

        localfarm.wait_for(running, 120, f"job {job_id} running")
        return self.client.job(job_id)


@pytest.fixture(scope="module")
def farm(request, tmp_path_factory) -> Iterator[SentinelFarm]:
    require_sentinel()  # before the S3 server and the models are made for nothing
    models_dir = request.getfixturevalue("models_dir")
    s3_env = request.getfixturevalue("s3_env")
    root = tmp_path_factory.mktemp("sentinel-farm")
    ha = Replicated(root).start()
    logs = root / "logs"
    logs.mkdir()
    env = {
        **s3_env,
        "RENDERFARM_REDIS_URL": ha.url,
        "RENDERFARM_REDIS_SENTINEL_MASTER": MASTER,
        "RENDERFARM_STORAGE_URL": f"s3://{BUCKET}/sentinel",
        "RENDERFARM_MODELS_DIR": str(models_dir),
        "RENDERFARM_HEARTBEAT_S": "0.5",
        "RENDERFARM_LEASE_S": "3",
        "RENDERFARM_EVENTS_HEARTBEAT_S": "1",
        "RENDERFARM_PASSWORD_ATTEMPTS_PER_NAME": "3/minute",
    }
    port = localfarm.free_port()
    procs = {
        "scheduler": localfarm.start_scheduler(env, log=logs / "scheduler.log"),
        "worker": localfarm.start_worker("cpu", env, log=logs / "worker.log"),
        "dashboard": localfarm.start_dashboard("127.0.0.1", port, env, log=logs / "dashboard.log"),
    }
    redis = redis_client(ha.settings())
    token = account_token(redis, "admin", "admin")
    client = FarmClient(f"http://127.0.0.1:{port}", token)
    farm = SentinelFarm(ha, env, logs, procs, client, redis, token)
    try:
        localfarm.wait_for(lambda: client.workers(), 120, "the cpu worker's heartbeat")
        yield farm
    finally:
        client.close()
        localfarm.stop(*procs.values())
        ha.stop()


def check_succeeded_once(farm: SentinelFarm, job_id: str) -> dict:
    """The job succeeded exactly once: one success in its attempts' history, its outputs
    and manifest in storage, and nothing else in storage but what a requeued attempt left."""
    job = farm.wait(job_id)
    assert job["status"] == "succeeded", (job["error"], farm.logs)
    record = JobRecords(farm.redis).get(job_id)
    outcomes = [h["outcome"] for h in record["history"]]
    assert outcomes.count("succeeded") == 1, record["history"]
    attempt = str(record["attempt"])
    named = sorted(o["key"].split(f"{job_id}/", 1)[1] for o in job["outputs"])
    stored = farm.objects(job_id)
    ours = [k for k in stored if k.startswith(f"{attempt}/")]
    assert ours == sorted([*named, f"{attempt}/manifest.json"])
    # Objects of another attempt only from one that was given up (requeued), never succeeded.
    given_up = {str(h["attempt"]) for h in record["history"] if h["outcome"] != "succeeded"}
    assert {k.split("/")[0] for k in stored} - {attempt} <= given_up, (stored, record["history"])
    body = s3_client(farm.env).get_object(
        Bucket=BUCKET, Key=f"sentinel/jobs/{job_id}/{attempt}/manifest.json"
    )["Body"]
    assert json.loads(body.read())["attempt"] == record["attempt"]
    return job


def events_seen(farm: SentinelFarm, seen: list[dict], stop: threading.Event) -> None:
    """Read one events stream (GET /api/v1/events) for as long as it lasts."""
    with FarmClient(farm.client.url, farm.token) as client:
        try:
            for event in client.events():
                seen.append(event)
                if stop.is_set():
                    return
        except requests.RequestException:
            return  # the farm stopped


@pytest.mark.timeout(600)
def test_a_failover_with_jobs_queued_and_running_loses_none_and_runs_none_twice(farm):
    stop = threading.Event()
    seen: list[dict] = []
    reader = threading.Thread(target=events_seen, args=(farm, seen, stop), daemon=True)
    reader.start()

    running = farm.client.submit({"prompt": "through the failover", "seed": 7, **SLOW})
    queued = [farm.client.submit({"prompt": f"queued {i}", **QUICK}) for i in range(4)]
    farm.running_with_progress(running["id"])
    old = farm.ha.master_port()
    new = farm.ha.failover()
    assert new != old

    for job in [running, *queued]:
        check_succeeded_once(farm, job["id"])

    # New work after the failover: submitted, dispatched, run and stored on the new master.
    after = [farm.client.submit({"prompt": f"after {i}", **QUICK}) for i in range(3)]
    for job in after:
        check_succeeded_once(farm, job["id"])
    with Redis("127.0.0.1", port=new) as master:
        assert all(master.exists(f"rf:job:{job['id']}") for job in after)

    # The events stream opened before the failover still carries the jobs after it.
    localfarm.wait_for(
        lambda: {e["job"] for e in seen if e["status"] == "succeeded"} >= {j["id"] for j in after},
        60,
        "the events of the jobs submitted after the failover",
    )
    stop.set()

    # Password throttling counts in the new master too: past the budget, 429.
    url = f"{farm.client.url}/api/v1/me"
    codes = [requests.get(url, auth=("admin", "wrong"), timeout=10).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]

    # A second failover back, the farm idle: the worker's consumer, the dispatcher and the
    # events stream are blocked on the master when it is demoted.
    assert farm.ha.failover() == old
    again = [farm.client.submit({"prompt": f"after the second {i}", **QUICK}) for i in range(2)]
    for job in again:
        check_succeeded_once(farm, job["id"])

    # The same processes did all of it: none died and came back.
    assert all(proc.poll() is None for proc in farm.procs.values())


@pytest.mark.timeout(300)
def test_a_dispatched_job_whose_task_message_was_lost_still_runs_once(farm):
    """What a failover can leave behind: the record's `dispatched` reached the replica and
    the task message sent right after it did not. The reaper sees the live worker's queue
    stay empty, requeues the job, and it runs once."""
    worker = farm.client.workers()[0]["name"]
    farm.client.drain(worker)  # the dispatcher leaves the job to us
    job = farm.client.submit({"prompt": "its message was lost", **QUICK})
    records = JobRecords(farm.redis)
    rec = records.get(job["id"])
    assert records.transition(
        job["id"],
        JobStatus.DISPATCHED,
        (JobStatus.PENDING,),
        rec["attempt"],
        attempt=rec["attempt"] + 1,
        queue=keys.worker_queue(worker),
        target=worker,
        dispatched_at=time.time(),
        waiting="",
    )
    PendingJobs(farm.redis).remove(job["id"], rec["owner"])
    farm.client.drain(worker, draining=False)
    done = check_succeeded_once(farm, job["id"])
    assert done["attempts"] == 1 and JobRecords(farm.redis).get(job["id"])["attempt"] == 2
    log = (farm.logs / "scheduler.log").read_text()
    assert f"job {job['id']} requeued: its task message was lost" in log


@pytest.mark.timeout(600)
def test_the_master_killed_mid_job_the_promoted_replica_carries_the_farm(farm):
    """A crash rather than a planned failover: the master is SIGKILLed with a job running
    and others queued; the sentinel promotes the replica; every job succeeds once, new work
    runs, and the crashed server, started again, rejoins as a replica."""
    running = farm.client.submit({"prompt": "through the crash", "seed": 9, **SLOW})
    queued = [farm.client.submit({"prompt": f"queued at the crash {i}", **QUICK}) for i in range(3)]
    farm.running_with_progress(running["id"])
    old = farm.ha.master_port()
    assert farm.ha.kill_master() != old
    for job in [running, *queued]:
        check_succeeded_once(farm, job["id"])
    after = farm.client.submit({"prompt": "after the crash", **QUICK})
    check_succeeded_once(farm, after["id"])
    farm.ha.restart(old)
    assert farm.ha.master_port() != old
    assert all(proc.poll() is None for proc in farm.procs.values())
