"""The OpenAPI document of /api/v1: valid 3.1, the same routes as the app, and schemathesis
against the real farm (bounded): no 5xx, every answer as the document says."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from dashboard.openapi import ROUTES
from tests.signin import account_token

# Read-only routes and submission: nothing that drains the shared farm's worker.
# Every read (but the event stream, which stays open) and submission.
FUZZED = {("get", r.path) for r in ROUTES if r.method == "get" and r.path != "/api/v1/events"} | {
    ("post", "/api/v1/jobs")
}


def test_document_is_valid_openapi_31_and_lists_every_api_route(farm):
    doc = requests.get(f"{farm.url}/api/v1/openapi.json", timeout=10).json()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    assert {"bearer", "basic"} == set(doc["components"]["securitySchemes"])
    # The job spec schemas are the pydantic models that validate submissions.
    assert {"Txt2ImgSpec", "Img2ImgSpec", "UpscaleSpec"} <= set(doc["components"]["schemas"])
    page = requests.get(f"{farm.url}/api/v1/docs", timeout=10)
    assert page.ok and "apidocs.js" in page.text and "cdn" not in page.text.lower()
    assert requests.get(f"{farm.url}/static/apidocs.js", timeout=10).ok


def test_the_table_matches_the_app_routes(app_rules):
    served = {
        (method.lower(), rule.rule.replace("<", "{").replace(">", "}").replace("int:", ""))
        for rule in app_rules
        for method in rule.methods - {"HEAD", "OPTIONS"}
        # The document and its page are not in the document.
        if rule.rule.startswith(("/api/v1", "/metrics"))
        and not rule.endpoint.startswith("openapi.")
    }
    documented = {(r.method, r.path) for r in ROUTES}
    assert served <= documented, served - documented


@pytest.fixture(scope="module")
def schema(farm):
    token = account_token(farm.redis, "openapi-fuzz", "member")
    loaded = schemathesis.openapi.from_url(f"{farm.url}/api/v1/openapi.json")
    return loaded, {"Authorization": f"Bearer {token}"}


def test_schemathesis_no_server_errors_and_answers_match(farm, schema):
    loaded, headers = schema
    failures, calls = [], []
    for (method, path), operation in (
        ((op.method, op.path), op)
        for result in loaded.get_all_operations()
        if (op := result.ok()) is not None
    ):
        if (method, path) not in FUZZED:
            continue

        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            calls.append((case.method.lower(), case.path))
            case.call_and_validate(
                base_url=farm.url,
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance, status_code_conformance],
                timeout=30,
            )

        strategy = operation.as_strategy()
        from hypothesis import given

        try:
            given(case=strategy)(run)()
        except Exception as exc:  # collect every operation's failure, then report
            failures.append(f"{method.upper()} {path}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert len(set(calls)) == len(FUZZED) and len(calls) > 3 * len(FUZZED)
