"""GET /api/v1/events on a real farm: live job changes as Server-Sent Events, resumed from
Last-Event-ID, with heartbeats (the farm's dashboard beats every second)."""

import requests

SPEC = {"model": "demo-sd15", "prompt": "sse", "width": 64, "height": 64, "steps": 2}


def open_stream(farm, headers=None) -> requests.Response:
    token = farm.client.session.headers["Authorization"]
    resp = requests.get(
        farm.url + "/api/v1/events",
        headers={"Authorization": token, **(headers or {})},
        stream=True,
        timeout=10,
    )
    assert resp.status_code == 200
    return resp


def test_a_job_is_followed_to_succeeded_and_resumed(farm):
    resp = open_stream(farm)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    lines = resp.iter_lines(decode_unicode=True)
    assert next(lines).startswith("retry:")  # sent at once: the stream is open
    job = farm.submit(**SPEC)
    from shared.client import parse_sse

    seen = []
    for event in parse_sse(lines):
        if event["job"] == job["id"]:
            seen.append(event)
            if event["status"] == "succeeded":
                break
    resp.close()
    statuses = [e["status"] for e in seen]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "succeeded"
    assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
    # Resuming after the first event gives the later ones, not the first.
    later = []
    for event in farm.client.events(last_id=seen[0]["id"], timeout=10):
        if event["job"] == job["id"]:
            later.append(event["id"])
            if event["status"] == "succeeded":
                break
    assert later == [e["id"] for e in seen[1:]]


def test_an_idle_stream_carries_heartbeats(farm):
    resp = open_stream(farm, {"Last-Event-ID": "99999999999999-0"})  # after everything: idle
    lines = resp.iter_lines(decode_unicode=True)
    assert next(lines).startswith("retry:")
    rest = [next(lines) for _ in range(2)]
    resp.close()
    assert ": keep-alive" in rest


def test_a_bad_last_event_id_is_refused(farm):
    resp = farm.client.request("GET", "/api/v1/events", headers={"Last-Event-ID": "x; drop"})
    assert resp.status_code == 422


def test_a_viewer_may_listen(farm):
    viewer = farm.as_account("ev-viewer", "viewer")
    resp = viewer.request("GET", "/api/v1/events", stream=True, params={"last_id": "0-0"})
    assert resp.status_code == 200
    resp.close()
    anonymous = requests.get(farm.url + "/api/v1/events", timeout=5, stream=True)
    assert anonymous.status_code == 401
