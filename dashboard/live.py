"""`GET /api/v1/events`: every job change, live, as Server-Sent Events.

Fed from the job events stream (scheduler/events.py): each event is `id: <stream id>` and
`data: <JSON>`; a client that reconnects with `Last-Event-ID` (or `?last_id=`) gets what
came after it. An idle stream carries a `: keep-alive` comment every `events_heartbeat_s`,
and ends after `events_max_s` (EventSource reconnects), or within STOP_CHECK_S of the
server stopping (it reconnects to another process). One thread per open stream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator

from flask import Blueprint, Response, jsonify, request, stream_with_context

from dashboard import farm
from dashboard.accounts import Account, Role
from dashboard.auth import current_account, require
from dashboard.holds import client_gone
from scheduler.events import STOP_CHECK_S, JobEvent, JobEvents

live = Blueprint("live", __name__)
STREAM_ID = re.compile(r"^\d+-\d+$")
RETRY_MS = 3000  # how soon EventSource reconnects


def visible(account: Account, event: JobEvent) -> bool:
    """Whether `account` may see `event`: the one place a stream is filtered. Every role
    sees the whole team's queue today."""
    return True


def sse(
    events: JobEvents,
    account: Account,
    after: str,
    heartbeat_s: float,
    max_s: float,
    stop: Callable[[], bool],
):
    """The stream's lines, from after `after` until `max_s` has passed or `stop()` is true
    (the client is gone, or the server stopping), asked at least every STOP_CHECK_S: a page
    left frees its thread and its place at once, not at the next write."""
    yield f"retry: {RETRY_MS}\n\n"
    ends = time.monotonic() + max_s
    beat_at = time.monotonic() + heartbeat_s
    while (now := time.monotonic()) < ends and not stop():
        wake = min(beat_at, ends, now + STOP_CHECK_S)
        found = events.read(after, block_s=max(wake - now, 0.001))
        if not found:
            if time.monotonic() >= beat_at:
                # A write: a client that went away ends the stream here.
                yield ": keep-alive\n\n"
                beat_at = time.monotonic() + heartbeat_s
            continue
        beat_at = time.monotonic() + heartbeat_s
        chunk = []
        for event in found:
            after = event.id
            if visible(account, event):
                data = json.dumps({"id": event.id, **event.as_dict()})
                chunk.append(f"id: {event.id}\ndata: {data}\n\n")
        if chunk:
            yield "".join(chunk)


@live.get("/events")
@require(Role.VIEWER)
def events():
    after = request.headers.get("Last-Event-ID") or request.args.get("last_id") or ""
    if after and not STREAM_ID.match(after):
        return jsonify(error="Last-Event-ID must be an event id such as 1700000000000-0"), 422
    stream = JobEvents(farm.jobs().redis)
    account = current_account()
    settings = farm.settings()
    holds, gone, stopping = farm.holds(), client_gone(), farm.stopping()
    holds.take(account.name)  # released when the server closes the response
    lines: Iterator[str] = sse(
        stream,
        account,
        after or stream.last_id(),
        settings.events_heartbeat_s,
        settings.events_max_s,
        lambda: gone() or stopping.is_set(),
    )
    resp = Response(
        stream_with_context(lines),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    resp.call_on_close(lambda: holds.release(account.name))
    return resp
