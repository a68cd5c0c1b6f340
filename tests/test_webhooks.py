"""Per-account webhooks: a real HTTP server on 127.0.0.1 receives the POST the scheduler's
notifier sends when a job of the account succeeds or fails."""

import json
import logging
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from redis import Redis

from renderfarm import localfarm
from scheduler.notify import Notifier
from shared import keys
from shared.client import ApiError
from shared.config import Settings

SPEC = {"model": "demo-sd15", "prompt": "hook", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def receiver():
    got: queue.Queue = queue.Queue()
    fails = {"left": 1}  # the first POST is refused: the notifier must retry

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if fails["left"]:
                fails["left"] -= 1
                self.send_response(503)
            else:
                got.put(body)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()


def test_webhook_receives_succeeded_and_failed(farm, receiver):
    url, got = receiver
    client = farm.as_account("hook-ann")
    assert client.set_webhook(url)["webhook_url"] == url
    assert farm.redis.hget(keys.webhooks(), "hook-ann") == url.encode()
    ok = client.submit(SPEC)
    body = got.get(timeout=30)
    assert body["event"] == "job.succeeded" and body["job"]["id"] == ok["id"]
    assert body["job"]["owner"] == "hook-ann" and body["job"]["outputs"]
    bad = client.submit({**SPEC, "model": "broken-model"})
    body = got.get(timeout=60)
    assert body["event"] == "job.failed" and body["job"]["id"] == bad["id"]
    assert body["job"]["error"]
    assert client.set_webhook("")["webhook_url"] == ""
    assert farm.redis.hget(keys.webhooks(), "hook-ann") is None


def test_webhook_url_is_checked_and_needs_a_member(farm):
    with pytest.raises(ApiError) as exc:
        farm.as_account("hook-bob").set_webhook("ftp://example.com/x")
    assert exc.value.status == 422 and exc.value.errors[0]["field"] == "webhook_url"
    with pytest.raises(ApiError) as exc:
        farm.as_account("hook-viewer", "viewer").set_webhook("http://127.0.0.1/x")
    assert exc.value.status == 403


# A Slack or Discord hook's path is its key; a URL's user info and query are secrets too.
SECRET_HOOK = "/services/T0/B0/XSECRETPATH?token=QSECRET"
SECRETS = ("hookuser", "S3CRETPW", "XSECRETPATH", "QSECRET")


def test_a_failed_webhook_is_logged_without_the_secrets_in_its_url(redis_url, receiver, caplog):
    """The scheduler's log says where and why (it wrote the whole URL, twice: its own words
    and requests' message), never what would let a reader post to the hook."""
    url, _ = receiver  # refuses its first POST with a 503
    settings = Settings(redis_url=redis_url, webhook_attempts=1, webhook_allow_private=True)
    notifier = Notifier(Redis.from_url(redis_url), settings)
    nobody = localfarm.free_port()  # nothing listens there
    body = {"event": "job.failed", "job": {"id": "job-1"}}
    with caplog.at_level(logging.WARNING, logger="scheduler.notify"):
        assert not notifier.send(f"http://hookuser:S3CRETPW@127.0.0.1:{nobody}{SECRET_HOOK}", body)
        assert not notifier.send(url.removesuffix("/hook") + SECRET_HOOK, body)
    logged = caplog.text
    assert f"http://127.0.0.1:{nobody}" in logged and "Connection refused" in logged
    assert "HTTP 503" in logged and "job-1" in logged
    assert not [s for s in SECRETS if s in logged], logged


# Where a member's webhook must not reach by default: the scheduler's own host, the farm's
# network, a cloud's metadata service.
INSIDE = [
    "http://127.0.0.1:6379/",
    "http://localhost:5555/api/worker/shutdown/cpu-1",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0:8000/hook",
    "http://10.0.0.5/hook",
    "http://192.168.1.20/hook",
    "http://169.254.169.254/latest/meta-data/",
]


def test_a_webhook_to_an_inside_address_is_refused_unless_allowed(app_client):
    """A member chooses the URL and the scheduler POSTs to it from inside the farm: to
    Flower, Redis or the metadata service it was a request no member could make itself."""
    client = app_client("hook-setter")
    for url in INSIDE:
        resp = client.post("/api/v1/me", json={"webhook_url": url})
        assert resp.status_code == 422, (url, resp.get_data(as_text=True))
        [error] = resp.get_json()["errors"]
        assert error["field"] == "webhook_url" and "WEBHOOK_ALLOW_PRIVATE" in error["reason"]
    public = client.post("/api/v1/me", json={"webhook_url": "https://8.8.8.8/hook"})
    assert public.status_code == 200, public.get_data(as_text=True)
    allowed = app_client("hook-setter", webhook_allow_private=True)
    assert allowed.post("/api/v1/me", json={"webhook_url": INSIDE[0]}).status_code == 200


def test_the_notifier_checks_the_address_again_and_follows_no_redirect(redis_url, receiver):
    """A URL set before the check (or a name that resolves elsewhere now) is refused when
    sent; and a receiver's redirect is not followed (it could point anywhere inside)."""
    url, got = receiver
    body = {"event": "job.succeeded", "job": {"id": "job-2"}}
    strict = Notifier(Redis.from_url(redis_url), Settings(redis_url=redis_url, webhook_attempts=2))
    assert not strict.send(url, body)
    assert got.empty()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(307)
            self.send_header("Location", url)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings(redis_url=redis_url, webhook_attempts=1, webhook_allow_private=True)
        loose = Notifier(Redis.from_url(redis_url), settings)
        assert not loose.send(f"http://127.0.0.1:{server.server_address[1]}/hook", body)
    finally:
        server.shutdown()
    assert got.empty(), "the redirect was followed"
