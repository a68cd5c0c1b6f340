"""Flower and the `celery` command line against a real farm, as an operator types them.

`celery --app scheduler.celery_app ...` finds the module's `app` (built from the
RENDERFARM_* environment); Flower runs as its own process with basic auth from
FLOWER_BASIC_AUTH and read-only from FLOWER_READ_ONLY, as the compose service `flower`
starts it, and follows the workers' task events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from renderfarm import localfarm
from shared import keys

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = ("ops", "flower-test-password")
TINY = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 2}


def celery_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "--app", "scheduler.celery_app", *args]


class Flower:
    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.auth = CREDENTIALS

    def post(self, path: str) -> requests.Response:
        return self.session.post(self.url + path, timeout=10)

    def get(self, path: str, **params: Any) -> Any:
        resp = self.session.get(self.url + path, params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()


@pytest.fixture(scope="module")
def flower(farm) -> Iterator[Flower]:
    port = localfarm.free_port()
    env = {
        **os.environ,
        **farm.env,
        "FLOWER_BASIC_AUTH": ":".join(CREDENTIALS),
        "FLOWER_READ_ONLY": "true",
    }
    with open(farm.logs / "flower.log", "ab") as log:
        proc = subprocess.Popen(
            celery_cmd("flower", f"--port={port}", "--address=127.0.0.1", "--persistent=False"),
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        localfarm.wait_for(
            lambda: requests.get(f"{url}/healthcheck", timeout=1).ok, 60, "flower", proc
        )
        yield Flower(url)
    finally:
        localfarm.stop(proc)


def test_flower_needs_its_basic_auth(flower):
    assert requests.get(f"{flower.url}/api/workers", timeout=10).status_code == 401
    wrong = requests.get(f"{flower.url}/api/workers", auth=("ops", "nope"), timeout=10)
    assert wrong.status_code == 401
    assert isinstance(flower.get("/api/workers"), dict)


def test_flower_lists_the_worker_and_the_task_that_ran_a_job(farm, flower):
    worker = farm.cpu_worker()
    # Flower hears the worker's events (its heartbeats) before the job is submitted, so it
    # sees the job's task events too.
    localfarm.wait_for(
        lambda: flower.get("/api/workers", status="true").get(worker) is True,
        60,
        "flower hearing the worker's events",
    )

    job = farm.wait(farm.submit(prompt="watched by flower", **TINY)["id"])
    assert job["status"] == "succeeded", job["error"]
    task_id = f"{job['id']}.{job['attempts_history'][-1]['attempt']}"

    tasks: dict[str, Any] = {}
    localfarm.wait_for(
        lambda: (
            tasks.update(flower.get("/api/tasks"))
            or tasks.get(task_id, {}).get("state") == "SUCCESS"
        ),
        30,
        f"flower listing task {task_id} as SUCCESS",
    )
    task = tasks[task_id]
    assert task["name"] == "renderfarm.run_job"
    assert task["worker"] == job["worker"] == worker
    assert job["id"] in task["args"]

    # Inspected live: one row per worker, consuming only its own queue.
    workers = flower.get("/api/workers", refresh="true")
    assert worker in workers
    queues = [q["name"] for q in workers[worker]["active_queues"]]
    assert queues == [keys.worker_queue(worker)]
    assert "renderfarm.run_job" in workers[worker]["registered"]

    # Read-only: Flower cannot revoke tasks or stop workers (jobs are steered through the
    # farm: renderfarm cancel, drain).
    for path in (f"/api/task/revoke/{task_id}", f"/api/worker/pool/restart/{worker}"):
        refused = flower.post(path)
        assert (refused.status_code, refused.text) == (403, "Read only mode is enabled"), path


def inspect(farm, command: str, worker: str) -> Any:
    """`celery inspect COMMAND --json` against the farm, retried while the worker is busy
    (a solo-pool worker answers between jobs)."""
    replies: dict[str, Any] = {}

    def answered() -> bool:
        out = subprocess.run(
            celery_cmd("inspect", command, "--json", "--timeout", "5", "--destination", worker),
            env={**os.environ, **farm.env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode == 0:
            replies.update(json.loads(out.stdout.strip().splitlines()[-1]))
        return worker in replies

    localfarm.wait_for(answered, 60, f"celery inspect {command} answering for {worker}")
    return replies[worker]


def test_celery_inspect_answers_with_the_farms_worker(farm):
    worker = farm.cpu_worker()
    assert inspect(farm, "ping", worker) == {"ok": "pong"}
    assert inspect(farm, "active", worker) == []  # idle: no job is running
    queues = [q["name"] for q in inspect(farm, "active_queues", worker)]
    assert queues == [keys.worker_queue(worker)]
