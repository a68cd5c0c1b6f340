"""The one HTTP client for the farm's REST API (v1): the CLI, the tests and the benchmarks.

Every typed method returns the parsed JSON answer and raises `ApiError` on a non-2xx one;
`request()` is the low-level call underneath them that returns the response as it came.

A dashboard restarting (or a balancer moving to another replica) costs a caller nothing: a
call is sent again, up to `retries` times after 0.25 s, 0.5 s, 1 s, ... (7.75 s in all by
default), when it can be repeated safely (`Retry`). A submission always carries an
Idempotency-Key (a new one per call if the caller gives none), so one cut after the
dashboard received it gets, sent again, the job (or batch) the first attempt made.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import requests
from urllib3.exceptions import NameResolutionError, NewConnectionError

from shared.vocabulary import FINAL

JSON = dict[str, Any]
RETRIES = 5
BACKOFF_S = 0.25  # before the first retry; doubled for each next one
RETRY_STATUSES = frozenset({502, 503})  # a balancer without a live replica, a draining one


class Retry(Enum):
    """When a call is sent again after a connection error or a 502/503."""

    UNSENT = "unsent"  # the connection was refused: the request never reached the dashboard
    SAFE = "safe"  # also cut after it was sent, or a 502/503: sending it again changes nothing


class ApiError(RuntimeError):
    """A non-2xx answer: `status`, `body` (parsed JSON, else text) and a 422's `errors`."""

    def __init__(self, method: str, path: str, resp: requests.Response) -> None:
        self.status: int = resp.status_code
        try:
            self.body: Any = resp.json()
        except ValueError:
            self.body = resp.text
        errors = self.body.get("errors") if isinstance(self.body, dict) else None
        self.errors: list[dict[str, str]] = (
            errors if self.status == 422 and isinstance(errors, list) else []
        )
        super().__init__(f"{method} {path}: {self.status} {resp.text}")

    @property
    def reason(self) -> str:
        """The refusal in words: a 422's `field: reason` pairs, else the answer's `error`."""
        if self.errors:
            return "; ".join(f"{e.get('field')}: {e.get('reason')}" for e in self.errors)
        if isinstance(self.body, dict) and self.body.get("error"):
            return str(self.body["error"])
        return str(self.body).strip() or "no reason given"


class FarmClient:
    """The REST API at `url` (e.g. http://127.0.0.1:8000) over one keep-alive session;
    `retries`: how many times a call is sent again (the module's docstring)."""

    def __init__(
        self, url: str, token: str | None = None, timeout: float = 30, retries: int = RETRIES
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.session = requests.Session()
        # The environment's proxy settings and CA bundle, read once here rather than on
        # every call (requests would: ~0.15 ms of a call's ~0.7 ms here). Not ~/.netrc:
        # the token, or the caller's own Authorization header, is the credential.
        env = self.session.merge_environment_settings(self.url, {}, None, None, None)
        self.session.trust_env = False
        self.session.proxies.update(env["proxies"])
        self.session.verify = env["verify"]
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> FarmClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the low-level call --------------------------------------------------------------

    def request(
        self, method: str, path: str, *, retry: Retry | None = None, **kwargs: Any
    ) -> requests.Response:
        """`method` `path` (from /api/...), as `requests` takes it; never raises on a status.
        Sent again as `retry` allows (default: SAFE for a GET, else UNSENT)."""
        kwargs.setdefault("timeout", self.timeout)
        if retry is None:
            retry = Retry.SAFE if method.upper() == "GET" else Retry.UNSENT
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                resp = self.session.request(method, self.url + path, **kwargs)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                if last or not _retryable(exc, retry):
                    raise
            else:
                if last or retry is not Retry.SAFE or resp.status_code not in RETRY_STATUSES:
                    return resp
                resp.close()
            time.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        resp = self.request(method, path, **kwargs)
        if not resp.ok:
            raise ApiError(method, path, resp)
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._call(method, path, **kwargs).json()

    # -- jobs ----------------------------------------------------------------------------

    def submit(
        self,
        spec: JSON,
        *,
        owner: str | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """POST /api/v1/jobs: the job as queued (the first one's, for a repeated key). Without
        `idempotency_key`, a new one for this call (so its retries make one job)."""
        body = {**spec, **_given(owner=owner, priority=priority)}
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._json("POST", "/api/v1/jobs", json=body, headers=headers, retry=Retry.SAFE)

    def job(self, job_id: str) -> JSON:
        return self._json("GET", f"/api/v1/jobs/{job_id}")

    def jobs(self, limit: int = 50, **filters: Any) -> list[JSON]:
        """The most recent jobs, newest first (the API gives at most 500); with `filters`
        (those of `find_jobs`), the first `limit` (at most 200) that match."""
        if filters:
            return self.find_jobs(per_page=limit, **filters)["jobs"]
        return self._json("GET", "/api/v1/jobs", params={"limit": limit})["jobs"]

    def find_jobs(
        self,
        *,
        owner: str | None = None,
        status: str | Collection[str] | None = None,
        model: str | None = None,
        hardware: str | None = None,
        q: str | None = None,
        page: int = 1,
        per_page: int = 50,
    ) -> JSON:
        """GET /api/v1/jobs with filters (`owner` a name or "me"; `status` one or several
        of queued, running, succeeded, failed, canceled; `q` a prompt substring) and paging:
        `{"jobs", "total", "page", "per_page"}`, newest first."""
        if status is not None and not isinstance(status, str):
            status = ",".join(status)
        params = _given(owner=owner, status=status, model=model, hardware=hardware, q=q)
        params |= {"page": str(page), "per_page": str(per_page)}
        return self._json("GET", "/api/v1/jobs", params=params)

    def gallery(self, *, owner: str | None = None, page: int = 1, per_page: int = 50) -> JSON:
        """The team's (or `owner`'s, or "me") recent outputs: `{"items", "total", ...}`."""
        params = _given(owner=owner) | {"page": str(page), "per_page": str(per_page)}
        return self._json("GET", "/api/v1/gallery", params=params)

    def thumbnail(self, job_id: str, index: int, size: int | None = None) -> bytes:
        """The WebP thumbnail of output `index` (longest side 256, or `size`: 128 or 256)."""
        params = {"size": size} if size is not None else {}
        return self._call(
            "GET", f"/api/v1/jobs/{job_id}/outputs/{index}/thumbnail", params=params
        ).content

    def events(self, last_id: str | None = None, timeout: float = 60) -> Iterator[JSON]:
        """The live job events (GET /api/v1/events), each a dict with its stream `id`; after
        `last_id`, else from now. Ends when the server closes the stream (after its
        `events_max_s`) or when no byte (not even a heartbeat) came for `timeout` seconds;
        resume with the last event's id."""
        headers = {"Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        resp = self._call("GET", "/api/v1/events", headers=headers, stream=True, timeout=timeout)
        with resp:
            yield from parse_sse(resp.iter_lines(decode_unicode=True))

    # -- my account ----------------------------------------------------------------------

    def me(self) -> JSON:
        return self._json("GET", "/api/v1/me")

    def set_webhook(self, url: str) -> JSON:
        """POST /api/v1/me: `url` receives a JSON POST when a job of mine succeeds or fails
        ("" clears it)."""
        return self._json("POST", "/api/v1/me", json={"webhook_url": url}, retry=Retry.SAFE)

    def wait(
        self,
        job_id: str,
        timeout: float = 60,
        poll_s: float = 0.05,
        until: Collection[str] = FINAL,
        on_poll: Callable[[JSON], None] | None = None,
    ) -> JSON:
        """GET the job every `poll_s` until its status is final or in `until`; returns it.

        The first GET is at once. `on_poll` sees every job answer, the last one included (to
        count polls, or to raise when something the job needs has died). TimeoutError after
        `timeout` seconds, naming the job and its last status.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_poll is not None:
                on_poll(job)
            if job["status"] in FINAL or job["status"] in until:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g}s")
            time.sleep(poll_s)

    def cancel(self, job_id: str) -> JSON:
        """A queued job never runs; a running one stops at its next step (409 if finished)."""
        return self._json("POST", f"/api/v1/jobs/{job_id}/cancel")

    def retry(self, job_id: str) -> JSON:
        """Run a failed or canceled job again."""
        return self._json("POST", f"/api/v1/jobs/{job_id}/retry")

    def delete(self, job_id: str) -> JSON:
        """A finished job, with its outputs, is deleted (409 while it is queued or running)."""
        return self._json("DELETE", f"/api/v1/jobs/{job_id}")

    def set_priority(self, job_id: str, priority: str) -> JSON:
        """high, normal or low, for a job not yet dispatched (409 after)."""
        return self._json(
            "POST",
            f"/api/v1/jobs/{job_id}/priority",
            json={"priority": priority},
            retry=Retry.SAFE,
        )

    def output(self, job_id: str, index: int) -> bytes:
        """The PNG bytes of output `index`."""
        return self._call("GET", f"/api/v1/jobs/{job_id}/outputs/{index}").content

    def input(self, job_id: str, field: str) -> bytes:
        """The PNG bytes of the job's input image `field` (`init_image`, `mask`, `image`,
        `controlnet.<n>.image`), as stored when it was submitted."""
        return self._call("GET", f"/api/v1/jobs/{job_id}/inputs/{field}").content

    def download(self, job: JSON, folder: Path) -> list[Path]:
        """Every output of `job` (a job as the API gave it) into `folder`, as <id>-<n>.png."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for out in job["outputs"]:
            path = folder / f"{job['id']}-{out['index']}.png"
            path.write_bytes(self.output(job["id"], out["index"]))
            paths.append(path)
        return paths

    # -- batches -------------------------------------------------------------------------

    def submit_batch(
        self,
        jobs: list[JSON] | None = None,
        spec: JSON | None = None,
        *,
        owner: str | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
    ) -> JSON:
        """POST /api/v1/batches: a list of specs, or one spec whose batch_count is split (the
        first one's batch, for a repeated key; a new key per call without one)."""
        if (jobs is None) == (spec is None):
            raise ValueError("give either jobs (a list of specs) or spec, not both")
        body = {"jobs": jobs} if jobs is not None else {"spec": spec}
        body |= _given(owner=owner, priority=priority)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        return self._json("POST", "/api/v1/batches", json=body, headers=headers, retry=Retry.SAFE)

    def batch(self, batch_id: str) -> JSON:
        return self._json("GET", f"/api/v1/batches/{batch_id}")

    def cancel_batch(self, batch_id: str) -> JSON:
        return self._json("POST", f"/api/v1/batches/{batch_id}/cancel")

    # -- the fleet and the model store ---------------------------------------------------

    def workers(self) -> list[JSON]:
        """The live workers' heartbeats."""
        return self._json("GET", "/api/v1/workers")["workers"]

    def drain(self, name: str, draining: bool = True) -> JSON:
        """The worker finishes its job and is sent no new ones (draining=False: undo)."""
        return self._json(
            "POST", f"/api/v1/workers/{name}/drain", json={"drain": draining}, retry=Retry.SAFE
        )

    def models(self) -> list[JSON]:
        return self._json("GET", "/api/v1/models")["models"]


def parse_sse(lines: Iterable[str]) -> Iterator[JSON]:
    """Server-Sent Events as the farm sends them: each `data:` line a JSON object, `id:` its
    stream id (put in the dict as `id`); comments (heartbeats) and `retry:` are skipped."""
    event_id, data = None, []
    for line in lines:
        if line == "":
            if data:
                event = json.loads("\n".join(data))
                if event_id is not None:
                    event.setdefault("id", event_id)
                yield event
            event_id, data = None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "id":
                event_id = value


def _retryable(exc: requests.RequestException, retry: Retry) -> bool:
    """Whether a call that raised `exc` may be sent again under `retry`. Not after a timeout
    (the caller's bound) or a name that does not resolve (no restart makes it resolve)."""
    if isinstance(exc, requests.Timeout):
        return False
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, NameResolutionError):
        return False
    return retry is Retry.SAFE or isinstance(reason, NewConnectionError)


def _given(**fields: str | None) -> JSON:
    return {k: v for k, v in fields.items() if v is not None}
