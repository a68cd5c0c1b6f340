"""Long requests — event streams and blocking SD-WebUI calls — each hold a server thread, so
each server process bounds them per account and in all (dashboard/holds.py): no account can
leave the dashboard without a thread for the rest of the team. On the real
`renderfarm dashboard`, one process of 8 threads: 3 long requests per account, 6 in all."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import requests
from playwright.sync_api import expect
from redis import Redis

from renderfarm import localfarm
from renderfarm.localfarm import wait_for
from shared.client import FarmClient
from tests.conftest import empty_db
from tests.signin import account_token
from tests.test_dashboard_browser import browser, sign_in  # noqa: F401

THREADS, PER_ACCOUNT = 8, 3
WAIT_S = 30  # only against a hang
TXT2IMG = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 1}


@pytest.fixture
def served(redis_url, models_dir, tmp_path) -> Iterator[tuple[str, Redis]]:
    url = empty_db(redis_url, 4)
    redis = Redis.from_url(url)
    env = {
        "RENDERFARM_REDIS_URL": url,
        "RENDERFARM_MODELS_DIR": str(models_dir),
        "RENDERFARM_STORAGE_URL": f"file://{tmp_path / 'outputs'}",
        "RENDERFARM_HTTP_PROCESSES": "1",
        "RENDERFARM_HTTP_THREADS": str(THREADS),
        "RENDERFARM_HTTP_HELD_PER_ACCOUNT": str(PER_ACCOUNT),
        # No write for a minute on an idle stream: a client that left is seen all the same.
        "RENDERFARM_EVENTS_HEARTBEAT_S": "60",
    }
    port = localfarm.free_port()
    proc = localfarm.start_dashboard("127.0.0.1", port, env, log=tmp_path / "dashboard.log")
    yield f"http://127.0.0.1:{port}", redis
    localfarm.stop(proc)
    redis.flushdb()


def stream(url: str, token: str) -> requests.Response:
    """An event stream opened on a connection of its own, its headers read (a server with
    no thread left would not even send those: the read times out)."""
    return requests.get(
        f"{url}/api/v1/events",
        headers={"Authorization": f"Bearer {token}"},
        stream=True,
        timeout=10,
    )


def accepted_again(url: str, token: str) -> bool:
    resp = stream(url, token)
    resp.close()
    return resp.status_code == 200


def test_one_accounts_event_streams_cannot_take_every_server_thread(served):
    url, redis = served
    tokens = {name: account_token(redis, name, "viewer") for name in ("vic", "val", "viv")}
    open_streams = {name: [] for name in tokens}
    try:
        for name, token in tokens.items():  # 9 streams tried: more than the 8 threads
            for _ in range(PER_ACCOUNT):
                open_streams[name].append(stream(url, token))
        assert [r.status_code for r in open_streams["vic"]] == [200] * PER_ACCOUNT
        assert [r.status_code for r in open_streams["val"]] == [200] * PER_ACCOUNT
        # 6 held: the rest of the threads stay for ordinary requests.
        full = open_streams["viv"][0]
        assert full.status_code == 503
        assert int(full.headers["Retry-After"]) > 0
        assert "3/4 of RENDERFARM_HTTP_THREADS" in full.json()["error"]
        with FarmClient(url, tokens["viv"], timeout=10) as viv:
            assert viv.me()["name"] == "viv"

        # Past its own share an account is told so, by name and setting.
        for held in open_streams["val"][:2]:
            held.close()
        wait_for(lambda: accepted_again(url, tokens["viv"]), WAIT_S, "a stream after two closed")
        over = stream(url, tokens["vic"])
        assert over.status_code == 429
        assert int(over.headers["Retry-After"]) > 0
        assert "vic already has 3" in over.json()["error"]
        assert "RENDERFARM_HTTP_HELD_PER_ACCOUNT" in over.json()["error"]

        # A client that goes away gives its place back.
        for held in open_streams["vic"]:
            held.close()
        wait_for(lambda: accepted_again(url, tokens["vic"]), WAIT_S, "a stream after vic's closed")
    finally:
        for held in (r for rs in open_streams.values() for r in rs):
            held.close()


def test_blocking_sdapi_calls_count_and_one_over_the_share_queues_no_job(served):
    url, redis = served
    token = account_token(redis, "meg", "member")
    auth = {"Authorization": f"Bearer {token}"}
    meg = FarmClient(url, token, timeout=10)
    answers: list[requests.Response] = []

    def blocking_call() -> None:
        answers.append(requests.post(f"{url}/sdapi/v1/txt2img", json=TXT2IMG, headers=auth))

    calls = [threading.Thread(target=blocking_call) for _ in range(PER_ACCOUNT)]
    for call in calls:
        call.start()
    try:
        # No worker: each call waits for its job, holding its thread.
        wait_for(
            lambda: len(meg.jobs(owner="meg")) == PER_ACCOUNT, WAIT_S, "meg's three jobs queued"
        )
        refused = requests.post(f"{url}/sdapi/v1/txt2img", json=TXT2IMG, headers=auth, timeout=10)
        assert refused.status_code == 429
        assert refused.json()["error"] == "TooManyRequests"  # SD-WebUI's shape
        assert "RENDERFARM_HTTP_HELD_PER_ACCOUNT" in refused.json()["detail"]
        assert stream(url, token).status_code == 429  # streams and calls share the count
        assert len(meg.jobs(owner="meg")) == PER_ACCOUNT  # the refused call queued nothing
    finally:
        for job in meg.jobs(owner="meg"):
            meg.cancel(job["id"])
        for call in calls:
            call.join(30)
    assert [a.status_code for a in answers] == [409] * PER_ACCOUNT  # JobCanceled
    wait_for(lambda: accepted_again(url, token), WAIT_S, "a stream once meg's calls answered")
    meg.close()


def test_a_blocking_call_whose_client_leaves_cancels_its_job_and_frees_its_place(served):
    url, redis = served
    token = account_token(redis, "sam", "member")
    sam = FarmClient(url, token, timeout=10)
    body = json.dumps(TXT2IMG).encode()
    request = (
        f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: farm\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    port = int(url.rsplit(":", 1)[1])
    calls = [socket.create_connection(("127.0.0.1", port)) for _ in range(PER_ACCOUNT)]
    for call in calls:
        call.sendall(request + body)
    wait_for(lambda: len(sam.jobs(owner="sam")) == PER_ACCOUNT, WAIT_S, "sam's three jobs queued")
    assert stream(url, token).status_code == 429
    for call in calls:  # the client gives up (a closed tab, a timeout)
        call.close()
    wait_for(
        lambda: {j["status"] for j in sam.jobs(owner="sam")} == {"canceled"},
        WAIT_S,
        "the calls' jobs canceled",
    )
    wait_for(lambda: accepted_again(url, token), WAIT_S, "a stream once sam's calls were left")
    sam.close()


@pytest.mark.browser
def test_a_page_refused_its_stream_polls_then_goes_live_when_a_place_is_free(served, browser):  # noqa: F811
    url, redis = served
    queue = sign_in(SimpleNamespace(url=url, redis=redis), browser, "pat", "viewer")
    live = queue.locator("#live")
    expect(live).to_have_attribute("title", "live (events)")  # the queue's stream: 1 of 3
    token = account_token(redis, "pat", "viewer")
    held = [stream(url, token) for _ in range(PER_ACCOUNT - 1)]
    try:
        assert [r.status_code for r in held] == [200] * (PER_ACCOUNT - 1)
        second = queue.context.new_page()
        second.goto(f"{url}/?scope=me")
        expect(second.locator("#live")).to_have_attribute("title", "polling")  # a 429
        held.pop().close()
        # Asked for again (every 10 s): live once a place is free, without a reload.
        expect(second.locator("#live")).to_have_attribute("title", "live (events)", timeout=30_000)
    finally:
        for r in held:
            r.close()
        queue.context.close()
