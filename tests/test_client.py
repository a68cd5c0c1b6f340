"""shared.client.FarmClient against the real farm: every method, its errors, its header."""

import http.server
import io
import json
import threading
import uuid

import pytest
import requests
from PIL import Image

from shared import keys
from shared.client import ApiError, FarmClient
from tests.signin import ensure_account

TINY = {"model": "demo-sd15", "width": 64, "height": 64, "steps": 2}


def test_submit_wait_and_the_output_bytes_are_a_png(farm, tmp_path):
    client = farm.client  # the admin's: it may submit on behalf of zoe
    ensure_account(farm.redis, "zoe")
    job = client.submit({"prompt": "client", "seed": 3, **TINY}, owner="zoe", priority="low")
    assert job["status"] == "queued" and job["owner"] == "zoe" and job["priority"] == "low"
    done = client.wait(job["id"])
    assert done["status"] == "succeeded", done["error"]
    png = client.output(job["id"], 0)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    (path,) = client.download(done, tmp_path / "got")
    assert path == tmp_path / "got" / f"{job['id']}-0.png" and path.read_bytes() == png
    assert client.job(job["id"]) == done
    assert client.jobs(limit=5)[0]["id"] == job["id"]
    assert any(m["name"] == "demo-sd15" for m in client.models())
    assert done["worker"] in {w["name"] for w in client.workers()}


def test_an_idempotency_key_gives_back_the_first_job(farm):
    key = uuid.uuid4().hex
    first = farm.client.submit({"prompt": "once", **TINY}, idempotency_key=key)
    again = farm.client.submit({"prompt": "once", **TINY}, idempotency_key=key)
    assert again["id"] == first["id"]
    assert farm.client.wait(first["id"])["status"] == "succeeded"

    spec = {"prompt": "batch once", **TINY}
    batch = farm.client.submit_batch([spec, spec], idempotency_key=key)
    repeat = farm.client.request(
        "POST", "/api/v1/batches", json={"jobs": [spec, spec]}, headers={"Idempotency-Key": key}
    )
    assert repeat.status_code == 200 and repeat.json()["id"] == batch["id"]
    assert [j["id"] for j in repeat.json()["jobs"]] == [j["id"] for j in batch["jobs"]]


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/batches"])
@pytest.mark.parametrize("key", ["x" * 256, "tab\tin it", ""])
def test_a_bad_idempotency_key_is_refused_naming_the_header(farm, path, key):
    spec = {"prompt": "k", **TINY}
    body = spec if path.endswith("jobs") else {"jobs": [spec]}
    before = farm.redis.zcard("rf:jobs")
    resp = farm.client.request("POST", path, json=body, headers={"Idempotency-Key": key})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "Idempotency-Key"
    assert "1 to 255 visible ASCII characters" in resp.json()["errors"][0]["reason"]
    assert farm.redis.zcard("rf:jobs") == before, "nothing recorded"


def test_a_refusal_is_an_api_error_naming_the_field(farm):
    before = farm.redis.zcard("rf:jobs")
    with pytest.raises(ApiError) as refused:
        farm.client.submit({"prompt": "p", **TINY, "width": 100})
    err = refused.value
    assert err.status == 422
    assert [e["field"] for e in err.errors] == ["width"]
    assert err.body["errors"] == err.errors
    assert str(err).startswith("POST /api/v1/jobs: 422 ")
    assert "width" in str(err)
    assert err.reason == f"width: {err.errors[0]['reason']}"  # what a command prints
    assert farm.redis.zcard("rf:jobs") == before, "nothing recorded"

    with pytest.raises(ApiError) as missing:
        farm.client.job("nope")
    assert missing.value.status == 404 and missing.value.errors == []
    assert missing.value.body == {"error": "no job 'nope'"}
    assert missing.value.reason == "no job 'nope'"
    with pytest.raises(ValueError, match="either jobs"):
        farm.client.submit_batch()


def test_request_returns_the_refused_response_without_raising(farm):
    not_an_object = farm.client.request("POST", "/api/v1/jobs", json=[1, 2])
    assert not_an_object.status_code == 400
    assert not_an_object.json()["errors"] == [{"field": "body", "reason": "must be a JSON object"}]
    bad = farm.client.request("POST", "/api/v1/jobs", json={"prompt": "p", **TINY, "steps": 0})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "steps"
    assert farm.client.request("GET", "/api/v1/jobs/nope").status_code == 404


def test_cancel_retry_and_priority_of_a_job_that_waits(farm):
    """A gpu job on a farm with no gpu worker stays queued: the controls act on it."""
    client = farm.client
    job = client.submit({"prompt": "no gpu here", "hardware": "gpu", **TINY})
    try:
        with pytest.raises(TimeoutError, match=f"job {job['id']} still queued after 0.3s"):
            client.wait(job["id"], timeout=0.3)
        seen = []
        waiting = client.wait(job["id"], until=("queued",), on_poll=seen.append)
        assert waiting["status"] == "queued" and seen == [waiting]
        assert client.set_priority(job["id"], "high")["priority"] == "high"
        assert client.cancel(job["id"])["status"] == "canceled"
        assert client.wait(job["id"], timeout=0)["status"] == "canceled"
        assert client.retry(job["id"])["status"] == "queued"
    finally:
        client.cancel(job["id"])
    with pytest.raises(ApiError) as conflict:
        client.cancel(job["id"])
    assert conflict.value.status == 409


def test_batches(farm):
    client = farm.client
    batch = client.submit_batch(spec={"prompt": "b", "seed": 5, "batch_count": 2, **TINY})
    assert [j["spec"]["seed"] for j in batch["jobs"]] == [5, 6]
    assert all(client.wait(j["id"])["status"] == "succeeded" for j in batch["jobs"])
    done = client.batch(batch["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0
    assert client.cancel_batch(batch["id"])["status"] == "succeeded", "nothing left to cancel"
    ensure_account(farm.redis, "ann")
    listed = client.submit_batch([{"prompt": "l", **TINY}], owner="ann", priority="high")
    assert [(j["owner"], j["priority"]) for j in listed["jobs"]] == [("ann", "high")]
    assert client.wait(listed["jobs"][0]["id"])["status"] == "succeeded"
    with pytest.raises(ApiError) as refused:
        client.submit_batch([{"prompt": "ok", **TINY}, {"prompt": "bad", **TINY, "width": 100}])
    assert [e["field"] for e in refused.value.errors] == ["jobs.1.width"]


def test_drain_and_undrain(farm):
    name = farm.cpu_worker()
    try:
        assert farm.client.drain(name) == {"worker": name, "draining": True}
        assert farm.redis.exists(keys.drain(name))
    finally:
        assert farm.client.drain(name, draining=False) == {"worker": name, "draining": False}
    assert not farm.redis.exists(keys.drain(name))


def test_draining_a_worker_that_is_not_live_is_refused(farm):
    """A typo (or a worker gone) is a 404 naming it, not a 200 that drains nothing and leaves
    a flag behind for ever; undraining any name clears its flag (one left by a worker gone)."""
    name = "cpu-0@nowhere"
    with pytest.raises(ApiError) as refused:
        farm.client.drain(name)
    assert refused.value.status == 404
    assert f"no live worker {name!r}" in refused.value.body["error"]
    assert not farm.redis.exists(keys.drain(name))
    farm.redis.set(keys.drain(name), 1)
    assert farm.client.drain(name, draining=False) == {"worker": name, "draining": False}
    assert not farm.redis.exists(keys.drain(name))


class _EchoAuthorization(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the Authorization header it received (or "-")."""

    def do_GET(self) -> None:
        body = json.dumps({"seen": self.headers.get("Authorization", "-")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echo_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoAuthorization)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_token_is_sent_as_a_bearer_header_on_every_request(farm, echo_url):
    with FarmClient(echo_url, token="s3cret") as client:
        for _ in range(2):  # the same keep-alive session, every time
            seen = client.request("GET", "/api/v1/jobs").json()["seen"]
            assert seen == "Bearer s3cret"
    with FarmClient(echo_url) as anonymous:
        assert anonymous.request("GET", "/api/v1/jobs").json()["seen"] == "-"
    # The farm reads it: an unknown token is refused, a real one is let in.
    with FarmClient(farm.url, token="s3cret") as client:
        resp = client.request("GET", "/api/v1/models")
        assert resp.status_code == 401
        assert resp.request.headers["Authorization"] == "Bearer s3cret"
    with farm.as_account("client-test", "viewer") as client:
        assert client.models()


def test_the_environment_is_read_once_a_proxy_honoured_and_netrc_never_replaces_the_token(
    echo_url, tmp_path, monkeypatch
):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with FarmClient(echo_url, token="s3cret") as client:
        assert client.request("GET", "/api/v1/jobs").json()["seen"] == "Bearer s3cret"
    # A proxy from the environment carries the calls (the echo server plays the proxy).
    monkeypatch.setenv("HTTP_PROXY", echo_url)
    monkeypatch.setenv("NO_PROXY", "")
    with FarmClient("http://farm.invalid:8000", token="s3cret") as client:
        assert client.request("GET", "/api/v1/jobs").json()["seen"] == "Bearer s3cret"
    monkeypatch.setenv("NO_PROXY", "farm.invalid")
    unproxied = FarmClient("http://farm.invalid:8000", token="s3cret", timeout=5)
    with unproxied, pytest.raises(requests.ConnectionError):
        unproxied.request("GET", "/api/v1/jobs")
