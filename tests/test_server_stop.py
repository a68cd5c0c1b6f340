"""Stopping and restarting the dashboard loses nothing (dashboard/server.py, shared/client.py):
a request in progress at SIGTERM gets its answer, an event stream ends cleanly, a new
connection is refused at once, the command exits 0; clients submitting through a restart on
the same port see no error and every job they were answered is recorded once. On one server
process and on two (the watching process passes the stop on)."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from redis import Redis

from dashboard import farm
from renderfarm import localfarm
from scheduler.batches import Batches
from scheduler.control import JobControl, SubmitError
from scheduler.quotas import Quota, QuotaExceeded
from shared import keys
from shared.client import FarmClient
from shared.jobspec import parse_spec
from shared.vocabulary import Hardware, Priority
from tests.conftest import empty_db, settings_on_db
from tests.signin import account_token
from tests.test_server_processes import closed, env_for, gone, servers

GRACE_S = 20
SDAPI_WAIT_S = 8  # the slow request: a blocking txt2img with no worker, answered 504 then
HANG_GUARD_S = GRACE_S + 10  # only against a hang: a stop takes seconds
NORMAL = Priority.NORMAL
TINY = {"model": "demo-sd15", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 1}


@pytest.fixture
def db_url(redis_url: str) -> str:
    return empty_db(redis_url, 5)


@pytest.fixture
def db(db_url: str) -> Iterator[Redis]:
    with Redis.from_url(db_url) as redis:
        yield redis


@pytest.fixture(params=[1, 2], ids=["1-process", "2-processes"])
def env(request, db_url: str, models_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **env_for(db_url, models_dir, tmp_path, request.param),
        "RENDERFARM_HTTP_GRACE_S": str(GRACE_S),
        "RENDERFARM_SDAPI_WAIT_S": str(SDAPI_WAIT_S),
        "RENDERFARM_EVENTS_MAX_S": "600",  # a stream that ends does so because of the stop
    }


def start(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    return localfarm.start_dashboard("127.0.0.1", port, env, log=log)


def stop_and_wait(proc: subprocess.Popen, processes: int) -> None:
    """SIGTERM the command; it (and each server process) exits 0 before the hang guard."""
    children = [p.pid for p in servers(proc, processes)] if processes > 1 else []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(HANG_GUARD_S) == 0
    assert gone(children)


def test_a_request_in_progress_and_an_event_stream_finish_and_new_connections_are_refused(
    env, db, tmp_path
):
    processes = int(env["RENDERFARM_HTTP_PROCESSES"])
    port = localfarm.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start(env, port, tmp_path / "dashboard.log")
    try:
        children = [p.pid for p in servers(proc, processes)] if processes > 1 else []
        auth = {"Authorization": f"Bearer {account_token(db, 'pat')}"}
        got: dict[str, object] = {}

        def generate() -> None:
            body = {k: v for k, v in TINY.items() if k != "model"}
            try:
                got["txt2img"] = requests.post(
                    f"{url}/sdapi/v1/txt2img", json=body, headers=auth, timeout=60
                )
            except Exception as exc:
                got["txt2img"] = exc

        stream = requests.get(f"{url}/api/v1/events", headers=auth, stream=True, timeout=60)
        assert stream.status_code == 200
        call = threading.Thread(target=generate)
        call.start()
        localfarm.wait_for(lambda: db.zcard(keys.jobs_index()) == 1, 10, "the txt2img job")

        proc.send_signal(signal.SIGTERM)
        assert closed(url), "a new connection was still accepted after SIGTERM"
        assert call.is_alive(), "the blocking call ended before the check (it waits 8 s)"
        lines = list(stream.iter_lines(decode_unicode=True))  # ends cleanly, no reset
        assert lines[0] == "retry: 3000"
        assert any(line.startswith("data: ") for line in lines), "the job's event came"
        call.join(HANG_GUARD_S)
        answer = got["txt2img"]
        assert isinstance(answer, requests.Response), answer
        assert answer.status_code == 504 and answer.json()["error"] == "Timeout", answer.text
        assert proc.wait(HANG_GUARD_S) == 0
        assert gone(children)
    finally:
        localfarm.stop(proc)


def test_submissions_through_a_restart_are_answered_and_each_recorded_once(env, db, tmp_path):
    processes = int(env["RENDERFARM_HTTP_PROCESSES"])
    port = localfarm.free_port()
    url = f"http://127.0.0.1:{port}"
    token = account_token(db, "ops", "admin")
    first = start(env, port, tmp_path / "first.log")
    second = None
    answered: list[str] = []  # every job id a client was given
    errors: list[BaseException] = []
    done = threading.Event()

    def submit_forever(n: int) -> None:
        """Clients 0 and 1 submit jobs, client 2 batches of two."""
        with FarmClient(url, token, timeout=30) as client:
            i = 0
            while not done.is_set():
                spec = {**TINY, "prompt": f"client {n} job {i}"}
                try:
                    if n < 2:
                        answered.append(client.submit(spec)["id"])
                    else:
                        batch = client.submit_batch([spec, spec])
                        answered.extend(job["id"] for job in batch["jobs"])
                except BaseException as exc:
                    errors.append(exc)
                    return
                i += 1

    clients = [threading.Thread(target=submit_forever, args=(n,)) for n in range(3)]
    try:
        for thread in clients:
            thread.start()
        localfarm.wait_for(lambda: len(answered) >= 30 or errors, 60, "submissions")
        before = len(answered)
        stop_and_wait(first, processes)
        # The same port again, as a restarted service; the clients' retries span the gap.
        second = start(env, port, tmp_path / "second.log")
        localfarm.wait_for(lambda: len(answered) >= before + 30 or errors, 60, "submissions")
    finally:
        done.set()
        for thread in clients:
            thread.join(60)
        localfarm.stop(first, second)
    assert not errors, errors
    recorded = {job.decode() for job in db.zrange(keys.jobs_index(), 0, -1)}
    assert len(set(answered)) == len(answered), "a client was given one job twice"
    assert set(answered) == recorded, "a job recorded that no client was answered, or lost"


# -- the Idempotency-Key under retries (scheduler/control.py) ---------------------------------


@pytest.fixture
def jobs(redis_url, models_dir, tmp_path) -> Iterator[JobControl]:
    settings = settings_on_db(redis_url, 5, models_dir, tmp_path / "storage")
    yield JobControl(settings)


def recorded(jobs: JobControl) -> int:
    return jobs.redis.zcard(keys.jobs_index())


def at_once(n: int, call: Callable[[], Any]) -> list[Any]:
    """What `call` returned in each of `n` threads let go together."""
    start, got = threading.Barrier(n), []

    def run() -> None:
        start.wait()
        got.append(call())

    threads = [threading.Thread(target=run) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return got


def test_repeats_racing_each_other_make_one_job(jobs):
    """A client's retries may reach two server processes at once: the record step sees the
    key, so one job is made and every repeat answers with it."""
    spec = parse_spec(TINY, jobs.settings)
    got = at_once(6, lambda: jobs.submit(spec, "ann", NORMAL, "k"))
    assert len({record["id"] for record, _ in got}) == 1
    assert sorted(created for _, created in got) == [False] * 5 + [True]
    assert recorded(jobs) == 1


def test_batch_repeats_racing_each_other_make_one_batch(jobs):
    spec = parse_spec(TINY, jobs.settings)
    got = at_once(6, lambda: Batches(jobs).submit([spec, spec], "ann", NORMAL, idempotency_key="k"))
    assert len({batch["id"] for batch, _ in got}) == 1
    assert sorted(created for _, created in got) == [False] * 5 + [True]
    assert {len(batch["jobs"]) for batch, _ in got} == {2}
    assert recorded(jobs) == 2
    # A job's key and a batch's are apart: the same key makes a job of its own.
    for key in ("k", "batch:k"):
        record, created = jobs.submit(spec, "ann", NORMAL, key)
        assert created and record["batch"] == ""


def test_a_key_whose_request_was_refused_makes_the_job_when_sent_right(jobs):
    with pytest.raises(SubmitError):
        jobs.submit(
            parse_spec({**TINY, "model": "no-such-model"}, jobs.settings), "ann", NORMAL, "k"
        )
    made, created = jobs.submit(parse_spec(TINY, jobs.settings), "ann", NORMAL, "k")
    assert created and jobs.submit(parse_spec(TINY, jobs.settings), "ann", NORMAL, "k")[0] == made
    assert recorded(jobs) == 1

    batches, good = Batches(jobs), parse_spec(TINY, jobs.settings)
    two_queued = Quota(max_queued=2, max_running=1, hardware=tuple(Hardware))
    with pytest.raises(QuotaExceeded):  # one queued already
        batches.submit([good, good], "ann", NORMAL, two_queued, idempotency_key="b")
    made, created = batches.submit([good, good], "ann", NORMAL, idempotency_key="b")
    assert created and batches.submit([good], "ann", NORMAL, idempotency_key="b")[0] == made
    assert recorded(jobs) == 3


def test_healthz_says_503_while_the_process_stops(app_client):
    client = app_client("pat")
    assert client.get("/healthz").status_code == 200
    farm.stopping(client.application).set()
    answer = client.get("/healthz")
    assert answer.status_code == 503 and answer.get_json() == {"ok": False, "stopping": True}
