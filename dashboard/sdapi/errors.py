"""Errors as SD-WebUI's clients expect them.

Invalid requests: FastAPI's 422 `{"detail": [{"loc", "msg", "type"}]}`. Everything else:
`{"error": <kind>, "detail": <text>, "body": "", "errors": <text>}` with its status. A
client's mistake is never a 500.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES

from dashboard.api import BadRequest
from scheduler.control import ConflictError, SubmitError
from scheduler.quotas import QuotaExceeded
from shared.jobspec import error_reason

# Statuses the app answers itself, named as SD-WebUI's exception classes would be.
ERROR_KINDS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}


class Invalid(Exception):
    """A request SD-WebUI would answer with 422: `errors` as [{loc, msg, type}]."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        self.errors = errors


def invalid(field: str, msg: str, kind: str = "value_error") -> Invalid:
    """One invalid field, named by its dotted path in the request body."""
    return Invalid([{"loc": ["body", *_path(field)], "msg": msg, "type": kind}])


class Failure(Exception):
    """A request that was valid but could not be answered with a result."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail


def _path(field: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in field.split(".") if p]


def error_body(kind: str, detail: str) -> dict[str, Any]:
    return {"error": kind, "detail": detail, "body": "", "errors": detail}


def failure(status: int, kind: str, detail: str) -> tuple[Response, int]:
    return jsonify(error_body(kind, detail)), status


def validation_errors(exc: ValidationError, rename: dict[str, str]) -> Invalid:
    """Pydantic's errors on our spec, named by the request fields they came from."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in ("txt2img", "img2img", "upscale"):
            loc = loc[1:]
        field = rename_field(".".join(loc), rename)
        out.append({"loc": ["body", *_path(field)], "msg": error_reason(err), "type": err["type"]})
    return Invalid(out or [{"loc": ["body"], "msg": str(exc), "type": "value_error"}])


def rename_field(field: str, rename: dict[str, str]) -> str:
    """Our spec's field → the SD-WebUI field it came from (prefix match: controlnet.0.x)."""
    for ours, theirs in rename.items():
        if field == ours or field.startswith(ours + "."):
            return theirs + field[len(ours) :]
    return field


def add_handlers(sdapi: Blueprint) -> None:
    """The blueprint's error handlers (set before it is registered)."""

    @sdapi.errorhandler(Invalid)
    def _invalid(exc: Invalid):
        return jsonify(detail=exc.errors), 422

    @sdapi.errorhandler(BadRequest)  # dashboard.api.json_body: not a JSON object
    def _bad_body(exc: BadRequest):
        errors = [{"loc": ["body"], "msg": e["reason"], "type": "value_error"} for e in exc.errors]
        return jsonify(detail=errors), 422

    @sdapi.errorhandler(SubmitError)
    def _unrunnable(exc: SubmitError):
        return jsonify(detail=invalid(exc.field, exc.reason).errors), 422

    @sdapi.errorhandler(QuotaExceeded)
    def _over_quota(exc: QuotaExceeded):
        return failure(429, "QuotaExceeded", f"over quota: {exc.reason}")

    @sdapi.errorhandler(ConflictError)
    def _conflict(exc: ConflictError):
        return failure(409, "Conflict", str(exc))

    @sdapi.errorhandler(Failure)
    def _failure(exc: Failure):
        return failure(exc.status, exc.kind, exc.detail)

    @sdapi.after_request
    def _errors_in_sdapi_shape(resp: Response) -> Response:
        # The app's own answers ({"error": text}: require()'s 401 and 403, the password
        # throttle's 429, the body limit's 413) get SD-WebUI's shape: clients read "detail".
        # Headers (WWW-Authenticate, Retry-After) stay.
        if resp.status_code >= 400:
            body = resp.get_json(silent=True) if resp.is_json else None
            if not isinstance(body, dict) or "detail" not in body:
                text = body.get("error") if isinstance(body, dict) else None
                kind = ERROR_KINDS.get(resp.status_code, "HTTPException")
                reply = error_body(kind, str(text or HTTP_STATUS_CODES.get(resp.status_code, "")))
                resp.set_data(jsonify(reply).get_data())
                resp.mimetype = "application/json"
        return resp


def init_errors(app: Flask, prefix: str) -> None:
    """JSON for every HTTP error under `prefix` (unknown routes, wrong methods)."""
    previous = app.error_handler_spec.get(None, {}).get(None, {}).get(HTTPException)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Unknown routes and wrong methods are app-level errors: JSON under /sdapi/v1 too.
        if request.path.startswith(prefix + "/") or request.path == prefix:
            return failure(exc.code or 500, type(exc).__name__, exc.description or exc.name)
        if previous is not None:
            return previous(exc)
        return exc
