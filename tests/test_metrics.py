"""What an operator's Prometheus and KEDA read from a real farm: `GET /metrics` and
`GET /api/v1/fleet/demand` follow jobs as they wait, run and finish, and the scheduler says
whether it leads. The session farm is shared, so figures are compared before and after."""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis

from renderfarm import localfarm
from tests.signin import account_token

SPEC = {"model": "demo-sd15", "prompt": "metrics", "width": 64, "height": 64, "steps": 2}
GPU_ONLY = {**SPEC, "hardware": "gpu"}  # no gpu worker in this farm: it waits


def scrape(url: str, token: str) -> dict[tuple[str, tuple], float]:
    resp = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(resp.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: dict, name: str) -> list[dict]:
    return [dict(labels) for (n, labels) in samples if n == name]


@pytest.fixture(scope="module")
def operator(farm) -> str:
    return account_token(farm.redis, "metrics-operator", "operator")


def test_waiting_jobs_are_counted_by_class_and_priority_and_age(farm, operator):
    farm.cpu_worker()
    before = scrape(farm.url, operator)
    job = farm.submit(**GPU_ONLY, priority="high")
    time.sleep(1.1)  # the job waits at least this long
    during = scrape(farm.url, operator)
    pending = ("renderfarm_jobs_pending", {"worker_class": "gpu", "priority": "high"})
    assert value(during, pending[0], **pending[1]) == value(before, pending[0], **pending[1]) + 1
    assert value(during, "renderfarm_oldest_pending_job_age_seconds", worker_class="gpu") >= 1
    demand = requests.get(
        f"{farm.url}/api/v1/fleet/demand",
        headers={"Authorization": f"Bearer {operator}"},
        timeout=10,
    ).json()
    gpu = demand["classes"]["gpu"]
    assert (
        gpu["workers"] == 0
        and gpu["pending"] >= 1
        and gpu["demand"] == gpu["pending"] + gpu["running"]
    )
    assert demand["classes"]["cpu"]["workers"] >= 1

    # A priority change moves it to its new cell; a cancel takes it out and counts it.
    farm.client.set_priority(job["id"], "low")
    moved = scrape(farm.url, operator)
    assert value(moved, pending[0], **pending[1]) == value(before, pending[0], **pending[1])
    low = {"worker_class": "gpu", "priority": "low"}
    assert (
        value(moved, "renderfarm_jobs_pending", **low)
        == value(before, "renderfarm_jobs_pending", **low) + 1
    )
    farm.client.cancel(job["id"])
    after = scrape(farm.url, operator)
    assert value(after, "renderfarm_jobs_pending", **low) == value(
        before, "renderfarm_jobs_pending", **low
    )
    canceled = ("renderfarm_jobs_finished_total", {"outcome": "canceled"})
    assert value(after, canceled[0], **canceled[1]) == value(before, canceled[0], **canceled[1]) + 1


def test_a_finished_job_counts_its_outcome_stages_dispatch_and_worker(farm, operator):
    worker = farm.cpu_worker()
    before = scrape(farm.url, operator)
    job = farm.wait(farm.submit(**SPEC)["id"])
    assert job["status"] == "succeeded"
    farm.beat_after(job)
    after = scrape(farm.url, operator)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) >= value(before, name, **labels) + by

    assert grew("renderfarm_jobs_finished_total", outcome="succeeded")
    assert grew("renderfarm_dispatches_total", worker_class="cpu")
    hits = sum(
        value(after, "renderfarm_dispatch_affinity_total", result=r) for r in ("hit", "miss")
    )
    hits_before = sum(
        value(before, "renderfarm_dispatch_affinity_total", result=r) for r in ("hit", "miss")
    )
    assert hits >= hits_before + 1
    assert grew("renderfarm_job_duration_seconds_count", worker_class="cpu")
    for stage in ("queue_wait", "model_load", "render", "upload"):
        assert grew("renderfarm_job_stage_seconds_count", stage=stage), stage
    render_inf = value(after, "renderfarm_job_stage_seconds_bucket", stage="render", le="+Inf")
    assert render_inf == value(after, "renderfarm_job_stage_seconds_count", stage="render")
    assert value(after, "renderfarm_job_stage_seconds_sum", stage="render") > 0

    states = {
        labels["state"]: value(after, "renderfarm_workers", **labels)
        for labels in series(after, "renderfarm_workers")
        if labels["worker_class"] == "cpu"
    }
    assert sum(states.values()) >= 1 and set(states) == {"idle", "busy", "draining", "stalled"}
    mine = [s for s in series(after, "renderfarm_model_cache_bytes") if s["worker"] == worker]
    assert mine and value(after, "renderfarm_model_cache_bytes", **mine[0]) > 0  # holds demo-sd15
    assert value(after, "renderfarm_model_loads_total", **mine[0]) >= 1
    assert value(after, "renderfarm_worker_rss_bytes", worker=worker, worker_class="cpu") > 0
    assert value(after, "renderfarm_scheduler_leader_present") == 1
    assert value(after, "renderfarm_redis_used_memory_bytes") > 0


def test_labels_carry_no_job_ids_prompts_or_queue_names(farm, operator):
    job = farm.wait(farm.submit(**{**SPEC, "prompt": "a-secret-prompt-word"})["id"])
    text = requests.get(
        f"{farm.url}/metrics", headers={"Authorization": f"Bearer {operator}"}, timeout=10
    ).text
    assert job["id"] not in text and "a-secret-prompt-word" not in text
    assert "worker." not in text  # a worker's own Celery queue


def test_members_and_anonymous_callers_are_refused(farm):
    member = account_token(farm.redis, "metrics-member", "member")
    for path in ("/metrics", "/api/v1/fleet/demand"):
        assert requests.get(farm.url + path, timeout=10).status_code == 401
        resp = requests.get(
            farm.url + path, headers={"Authorization": f"Bearer {member}"}, timeout=10
        )
        assert resp.status_code == 403


def test_the_scheduler_says_whether_it_holds_the_dispatcher_lock(redis_url, tmp_path):
    """Two schedulers on an empty database: the first leads, the second stands by."""
    url = redis_url.rsplit("/", 1)[0] + "/14"
    Redis.from_url(url).flushdb()
    env = {"RENDERFARM_REDIS_URL": url}
    ports = [localfarm.free_port(), localfarm.free_port()]
    procs = []
    try:
        for i, port in enumerate(ports):
            procs.append(
                localfarm.start_scheduler(
                    {**env, "RENDERFARM_SCHEDULER_METRICS_PORT": str(port)},
                    log=tmp_path / f"scheduler-{i}.log",
                )
            )
            localfarm.wait_for(lambda p=port: leader(p) is not None, 60, f"scheduler {i}")
            if i == 0:
                localfarm.wait_for(lambda: leader(ports[0]) == 1, 30, "the first to lead")
        time.sleep(1)  # a few dispatcher passes
        assert (leader(ports[0]), leader(ports[1])) == (1, 0)
        localfarm.stop(procs[0])  # the lock expires, the standby takes over
        localfarm.wait_for(lambda: leader(ports[1]) == 1, 30, "the standby to lead")
    finally:
        localfarm.stop(*procs)


def leader(port: int) -> float | None:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.ConnectionError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "renderfarm_scheduler_leader":
            return family.samples[0].value
    return None


def test_the_census_matches_the_records_through_every_transition(redis_url, models_dir, tmp_path):
    """Random walks along TRANSITIONS: the census cells (read in O(1)) always equal a count
    of the records themselves, and the finished counters count each edge once."""
    import random

    from scheduler.census import read_census
    from scheduler.records import TRANSITIONS, JobRecords
    from shared import keys
    from shared.jobspec import parse_spec
    from shared.vocabulary import Hardware, JobStatus, Priority
    from tests.conftest import settings_on_db

    settings = settings_on_db(redis_url, 13, models_dir, tmp_path)
    records = JobRecords(Redis.from_url(settings.redis_url))
    rng = random.Random(7)
    ids, finished = [], dict.fromkeys(("succeeded", "failed", "canceled", "lost"), 0)
    for i in range(60):
        spec = parse_spec(
            {**SPEC, "hardware": rng.choice(["auto", *Hardware])}, settings
        ).with_seed()
        ids.append(records.create(f"job-{i}", spec, "census", rng.choice(list(Priority)))["id"])
    for _ in range(600):
        rec = records.get(rng.choice(ids))
        now = time.time()
        if rec["status"] == JobStatus.PENDING and rng.random() < 0.3:
            assert records.update(rec["id"], JobStatus.PENDING, priority=rng.choice(list(Priority)))
            continue
        options = sorted(TRANSITIONS[rec["status"]])
        if not options:
            continue
        to = rng.choice(options)
        fields = {"worker_class": rng.choice(list(Hardware))} if to == JobStatus.DISPATCHED else {}
        if to == JobStatus.RUNNING:
            fields["started_at"] = now
        if to.final:
            fields["finished_at"] = now + 0.5
        assert records.transition(rec["id"], to, (rec["status"],), **fields)
        if to.final:
            finished[to.value] += 1
        elif to == JobStatus.PENDING and rec["status"] in (JobStatus.DISPATCHED, JobStatus.RUNNING):
            finished["lost"] += 1

    figures = read_census(records.redis)
    everything = [records.get(i) for i in ids]
    for (asked, priority), count in figures.pending.items():
        expected = sum(
            1
            for r in everything
            if r["status"] == JobStatus.PENDING
            and r["class_asked"] == asked
            and r["priority"] == priority
        )
        assert count == expected, (asked, priority)
    for status, cells in (
        (JobStatus.DISPATCHED, figures.dispatched),
        (JobStatus.RUNNING, figures.running),
    ):
        for hw, count in cells.items():
            assert count == sum(
                1 for r in everything if r["status"] == status and r["worker_class"] == hw
            ), (status, hw)
    dispatched = sum(1 for r in everything if r["status"] == JobStatus.DISPATCHED)
    assert int(records.redis.hget(keys.dispatched_by_owner(), "census") or 0) == dispatched
    assert {o: figures.finished(o) for o in finished} == finished
    ran_to_the_end = sum(h.count for h in figures.durations.values())
    assert ran_to_the_end == sum(
        1
        for r in everything
        for a in r["history"]
        if a["outcome"] in ("succeeded", "failed", "canceled")
    )


def test_the_farm_exports_exactly_the_metrics_contract(farm, operator):
    """The names, types and labels the Grafana dashboard and alert rules are checked
    against (tests/metrics_contract.py) are the ones /metrics really serves."""
    from tests.metrics_contract import DASHBOARD

    farm.wait(farm.submit(**SPEC)["id"])  # some samples in every family a CPU farm has
    text = requests.get(
        f"{farm.url}/metrics", headers={"Authorization": f"Bearer {operator}"}, timeout=10
    ).text
    served = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        served[name] = (family.type, labels)
    assert set(served) == set(DASHBOARD)
    for name, (kind, labels) in served.items():
        assert kind == DASHBOARD[name].kind, name
        if not name.startswith("renderfarm_vram_"):  # no GPU worker here: no samples
            assert labels == DASHBOARD[name].labels, name
