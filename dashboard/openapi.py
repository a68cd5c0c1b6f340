"""OpenAPI 3.1 for /api/v1, generated from the pydantic models that validate the specs.

Why our own generator: the routes stay plain Flask views in dashboard/api.py (flask-openapi3
and spectree both want the views rewritten around their decorators), and pydantic already
writes JSON Schema 2020-12, which is OpenAPI 3.1's schema dialect. So the document is
`model_json_schema()` of shared/jobspec.py's models plus the table `ROUTES` below: each
route, the role it needs, its body model and its answers. A route added to the API and not
here is missing from the document — tests/test_openapi.py compares the table with the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, jsonify, render_template
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from dashboard import ui
from dashboard.accounts import Role
from dashboard.api import IDEMPOTENCY_KEY
from dashboard.tokens import MAX_LABEL
from shared.jobspec import JobSpec

openapi = Blueprint("openapi", __name__, template_folder="templates")
REF = "#/components/schemas/{model}"


class Error(BaseModel):
    """Every refusal: `error`, and for an invalid request `errors` naming the fields."""

    model_config = ConfigDict(extra="allow")
    error: str
    errors: list[dict[str, str]] | None = None


class Output(BaseModel):
    index: int
    key: str
    url: str


class Input(BaseModel):
    field: str = Field(description="init_image, mask, image or controlnet.<n>.image")
    key: str
    url: str


class Job(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    status: str = Field(description="queued, running, succeeded, failed or canceled")
    state: str
    owner: str
    priority: str
    progress: float
    spec: dict[str, Any]
    seeds: list[int]
    error: str | None = None
    outputs: list[Output]
    inputs: list[Input] | None = Field(None, description="its input images (GET of one job)")
    created_at: float


class Deleted(BaseModel):
    id: str
    deleted: bool


class JobList(BaseModel):
    model_config = ConfigDict(extra="allow")
    jobs: list[Job]
    total: int | None = None
    page: int | None = None
    per_page: int | None = None
    truncated: bool | None = Field(
        None, description="a prompt search (q) left older matches of the other filters unread"
    )
    searched: int | None = Field(
        None, description="how many jobs a prompt search read, newest first (null: no q)"
    )


class Gallery(BaseModel):
    items: list[dict[str, Any]]
    total: int
    page: int
    per_page: int


class MeBody(BaseModel):
    webhook_url: str = Field(
        description="http(s) URL that receives job.succeeded/failed; '' clears"
    )


class Account(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    role: str
    disabled: bool


class AccountList(BaseModel):
    accounts: list[Account]


class AccountBody(BaseModel):
    name: str
    role: str = Field(description="viewer, member, operator or admin")
    password: str | None = None


class AccountChange(BaseModel):
    role: str | None = None
    password: str | None = None
    disabled: bool | None = None


class TokenBody(BaseModel):
    label: str | None = Field(default=None, max_length=MAX_LABEL)
    expires_days: int | None = None
    account: str | None = Field(default=None, description="admins: another account's")


class TokenList(BaseModel):
    tokens: list[dict[str, Any]]


class AuditLog(BaseModel):
    entries: list[dict[str, Any]]


class Model(BaseModel):
    name: str
    family: str
    kind: str
    size_bytes: int


class ModelList(BaseModel):
    models: list[Model]


class Workers(BaseModel):
    workers: list[dict[str, Any]]


class Me(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    role: str


class Priority(BaseModel):
    priority: str = Field(description="high, normal or low")


class Batch(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    jobs: list[Job]


class BatchBody(BaseModel):
    jobs: list[dict[str, Any]] | None = None
    spec: dict[str, Any] | None = None


class ClassDemand(BaseModel):
    pending: int
    running: int
    workers: int
    demand: int = Field(description="pending + running: the workers this class could use")


class Demand(BaseModel):
    classes: dict[str, ClassDemand]
    at: float


class Health(BaseModel):
    ok: bool
    redis: bool


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI's {param} form
    role: Role | None  # None: open
    summary: str
    body: Any = None  # a pydantic model or a type for TypeAdapter
    ok: Any = None
    ok_status: int = 200
    errors: tuple[int, ...] = ()
    media: str | None = None  # an answer that is not JSON: its media type
    params: tuple[tuple[str, str, str], ...] = field(default=())  # (name, in, type)
    unavailable: str = ""  # why a 503 (by default: UNAVAILABLE, the object store's)


JOB_ID = (("job_id", "path", "string"),)
# Where the answer needs the object store (results, inputs, an S3 model store).
UNAVAILABLE = "object storage not answering: try again after Retry-After seconds"
HELD = (
    "the server holds as many event streams and blocking SD-WebUI calls as it keeps open "
    "(429: you hold your share): try again after Retry-After seconds"
)
# Every submission's (202): a repeat with the same key gets what the first one made (200).
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a repeat within a day (from the same owner) makes nothing and answers 200",
    "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY.pattern}$"},
}
ROUTES: tuple[Route, ...] = (
    Route("get", "/healthz", None, "The process answers and Redis does", ok=Health, errors=(503,)),
    Route("get", "/api/v1/me", Role.VIEWER, "Who you are", ok=Me),
    Route("post", "/api/v1/jobs", Role.MEMBER, "Submit a job", body=JobSpec, ok=Job,
          ok_status=202, errors=(400, 422, 429, 503)),
    Route("get", "/api/v1/jobs", Role.VIEWER, "Jobs, newest first, filtered and paged",
          ok=JobList, errors=(422,),
          params=(("limit", "query", "integer"), ("owner", "query", "string"),
                  ("status", "query", "string"), ("model", "query", "string"),
                  ("hardware", "query", "string"), ("q", "query", "string"),
                  ("page", "query", "integer"), ("per_page", "query", "integer"))),
    Route("get", "/api/v1/jobs/{job_id}/outputs/{index}/thumbnail", Role.VIEWER,
          "A small WebP of an output", media="image/webp", errors=(404, 422, 503),
          params=(*JOB_ID, ("index", "path", "integer"), ("size", "query", "integer"))),
    Route("get", "/api/v1/gallery", Role.VIEWER, "Recent outputs, newest first", ok=Gallery,
          errors=(422,), params=(("owner", "query", "string"), ("page", "query", "integer"),
                                 ("per_page", "query", "integer"))),
    Route("get", "/api/v1/events", Role.VIEWER, "Server-Sent Events: every job change",
          media="text/event-stream", errors=(422, 429, 503), unavailable=HELD,
          params=(("last_id", "query", "string"),)),
    Route("post", "/api/v1/me", Role.MEMBER, "Set your webhook", body=MeBody, ok=Me,
          errors=(400, 422)),
    Route("get", "/api/v1/accounts", Role.ADMIN, "Every account", ok=AccountList),
    Route("post", "/api/v1/accounts", Role.ADMIN, "Create an account", body=AccountBody,
          ok=Account, ok_status=201, errors=(400, 422)),
    Route("post", "/api/v1/accounts/{name}", Role.ADMIN, "Change, disable or enable an account",
          body=AccountChange, ok=Account, errors=(400, 404, 422),
          params=(("name", "path", "string"),)),
    Route("get", "/api/v1/tokens", Role.MEMBER, "Your tokens (admins: any account's)",
          ok=TokenList, errors=(404,), params=(("account", "query", "string"),)),
    Route("post", "/api/v1/tokens", Role.MEMBER, "Create a token (its secret shown once)",
          body=TokenBody, ok_status=201, errors=(400, 404, 409, 422)),
    Route("delete", "/api/v1/tokens/{token_id}", Role.MEMBER, "Revoke a token",
          errors=(404,), params=(("token_id", "path", "string"), ("account", "query", "string"))),
    Route("get", "/api/v1/audit", Role.ADMIN, "The audit log, newest first", ok=AuditLog,
          params=(("limit", "query", "integer"), ("actor", "query", "string"),
                  ("action", "query", "string"), ("target", "query", "string"))),
    Route("get", "/api/v1/jobs/{job_id}", Role.VIEWER, "A job", ok=Job, errors=(404,),
          params=JOB_ID),
    Route("get", "/api/v1/jobs/{job_id}/outputs/{index}", Role.VIEWER, "An output PNG",
          media="image/png", errors=(404, 503), params=(*JOB_ID, ("index", "path", "integer"))),
    Route("get", "/api/v1/jobs/{job_id}/inputs/{field}", Role.VIEWER,
          "An input image (PNG) of the job, by its field", media="image/png", errors=(404, 503),
          params=(*JOB_ID, ("field", "path", "string"))),
    Route("post", "/api/v1/jobs/{job_id}/cancel", Role.MEMBER, "Cancel a job", ok=Job,
          errors=(403, 404, 409), params=JOB_ID),
    Route("delete", "/api/v1/jobs/{job_id}", Role.MEMBER,
          "Delete a finished job with its outputs", ok=Deleted, errors=(403, 404, 409),
          params=JOB_ID),
    Route("post", "/api/v1/jobs/{job_id}/retry", Role.MEMBER, "Run a finished job again",
          ok=Job, errors=(403, 404, 409), params=JOB_ID),
    Route("post", "/api/v1/jobs/{job_id}/priority", Role.MEMBER, "Re-prioritise a queued job",
          body=Priority, ok=Job, errors=(403, 404, 409, 422), params=JOB_ID),
    Route("post", "/api/v1/batches", Role.MEMBER, "Submit a batch", body=BatchBody, ok=Batch,
          ok_status=202, errors=(400, 422, 429, 503)),
    Route("get", "/api/v1/batches/{batch_id}", Role.VIEWER, "A batch", ok=Batch, errors=(404,),
          params=(("batch_id", "path", "string"),)),
    Route("post", "/api/v1/batches/{batch_id}/cancel", Role.MEMBER, "Cancel a batch", ok=Batch,
          errors=(403, 404), params=(("batch_id", "path", "string"),)),
    Route("get", "/api/v1/workers", Role.VIEWER, "The live workers' heartbeats", ok=Workers),
    Route("post", "/api/v1/workers/{name}/drain", Role.OPERATOR, "Drain or undrain a worker",
          errors=(404,), params=(("name", "path", "string"),)),
    Route("get", "/api/v1/models", Role.VIEWER, "The models in the store", ok=ModelList,
          errors=(503,)),
    Route("get", "/api/v1/fleet/demand", Role.OPERATOR,
          "Waiting and active jobs and live workers per class, for autoscalers (KEDA)",
          ok=Demand),
    Route("get", "/metrics", Role.OPERATOR, "Prometheus metrics of the whole farm",
          media="text/plain"),
)  # fmt: skip


def _schema(model: Any, defs: dict[str, Any]) -> dict[str, Any]:
    adapter = TypeAdapter(model)
    schema = adapter.json_schema(ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    if isinstance(model, type) and issubclass(model, BaseModel):
        defs[model.__name__] = schema
        return {"$ref": REF.format(model=model.__name__)}
    return schema


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def document() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    error = _schema(Error, defs)
    paths: dict[str, Any] = {}
    for route in ROUTES:
        op: dict[str, Any] = {"summary": route.summary, "operationId": _op_id(route)}
        if route.role is None:
            op["security"] = []
        else:
            op["description"] = f"Needs role `{route.role}` or above."
        if route.params:
            op["parameters"] = [
                {"name": n, "in": where, "required": where == "path", "schema": {"type": t}}
                for n, where, t in route.params
            ]
        if route.body is not None:
            op["requestBody"] = {"required": True, **_json(_schema(route.body, defs))}
        ok_schema = _schema(route.ok, defs) if route.ok is not None else {"type": "object"}
        ok = {"description": "OK", **_json(ok_schema)}
        if route.media:
            ok = {"description": route.media, "content": {route.media: {"schema": {}}}}
        responses = {str(route.ok_status): ok}
        if route.ok_status == 202:  # a submission: a repeated Idempotency-Key makes nothing
            responses["200"] = {
                "description": "what an earlier request with this Idempotency-Key made",
                **_json(ok_schema),
            }
            op.setdefault("parameters", []).append(IDEMPOTENCY_HEADER)
        statuses = set(route.errors) | ({401, 403} if route.role else set()) | {413}
        for status in sorted(statuses):
            why = (route.unavailable or UNAVAILABLE) if status == 503 and route.role else "refused"
            responses[str(status)] = {"description": why, **_json(error)}
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "renderfarm REST API", "version": "1"},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"basic": []}],
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API token"},
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "name:password or name:token",
                },  # noqa: E501
            },
        },
    }


def _op_id(route: Route) -> str:
    words = [p.strip("{}") for p in route.path.split("/") if p and p not in ("api", "v1")]
    return "_".join([route.method, *words]).replace("-", "_")


@openapi.get("/openapi.json")
def openapi_json():
    """Open to anyone: the document holds no data, and tools read it before signing in."""
    return jsonify(document())


@openapi.get("/docs")
def docs():
    # The dashboard pages' policy: its script and styles from this site only, no framing.
    return render_template("apidocs.html"), 200, ui.HEADERS


def init_openapi(app: Flask) -> None:
    app.register_blueprint(openapi, url_prefix="/api/v1")
