"""Job records: the allowed transitions, and the events stream every change writes."""

import threading
import time

import pytest
from redis import Redis

from scheduler.control import JobControl
from scheduler.events import JobEvents
from shared.jobspec import parse_spec
from shared.vocabulary import JobStatus, Priority
from tests.conftest import settings_on_db

SPEC = {"model": "demo-sd15", "prompt": "p", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def jobs(redis_url, models_dir, tmp_path):
    settings = settings_on_db(redis_url, 11, models_dir, tmp_path)
    yield JobControl(settings)
    Redis.from_url(settings.redis_url).flushdb()


def submit(jobs: JobControl) -> str:
    record, _ = jobs.submit(parse_spec(SPEC, jobs.settings), "ann", Priority.NORMAL)
    return record["id"]


def test_an_edge_not_in_the_table_is_refused(jobs):
    job_id = submit(jobs)
    with pytest.raises(ValueError, match="no transition pending -> succeeded"):
        jobs.records.transition(job_id, JobStatus.SUCCEEDED, (JobStatus.PENDING,))
    with pytest.raises(ValueError, match="no transition succeeded -> pending"):
        jobs.records.transition(job_id, JobStatus.PENDING, (JobStatus.SUCCEEDED,))
    assert jobs.records.get(job_id)["status"] == JobStatus.PENDING


def test_every_change_is_an_event_in_order(jobs):
    events = JobEvents(jobs.redis)
    start = events.last_id()
    job_id = submit(jobs)
    jobs.set_priority(job_id, Priority.HIGH)
    jobs.cancel(job_id)
    seen = [(e.job, e.status, e.seq) for e in events.read(start)]
    assert seen == [
        (job_id, JobStatus.PENDING, 1),
        (job_id, JobStatus.PENDING, 2),
        (job_id, JobStatus.CANCELED, 3),
    ]
    assert events.read(events.last_id()) == []  # resuming after the newest: nothing new
    assert events.read(start)[-1].as_dict()["status"] == "canceled"


def test_waiting_for_a_job_is_woken_by_its_event(jobs):
    events = JobEvents(jobs.redis)
    job_id = submit(jobs)
    threading.Timer(0.3, jobs.cancel, args=[job_id]).start()
    started = time.monotonic()
    record = events.wait_final(jobs.records, job_id, timeout_s=20)
    assert record["status"] == JobStatus.CANCELED
    assert time.monotonic() - started < 5  # woken by the change, not the timeout
    still = submit(jobs)
    assert events.wait_final(jobs.records, still, timeout_s=0.2)["status"] == JobStatus.PENDING
    assert events.wait_final(jobs.records, "no-such-job", timeout_s=0.2) is None
