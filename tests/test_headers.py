"""Security headers on the app's answers: Flask's test client on the real app, real Redis."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

# No worker: the job stays queued, and its input image is stored at submission.
IMG2IMG = {"kind": "img2img", "model": "demo-sd15", "prompt": "x", "width": 64, "height": 64}


@pytest.fixture
def client(app_client):
    return app_client("header-tester")


def png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_no_answer_may_be_sniffed_as_another_type(client):
    """An input image is served byte for byte as a member sent it: a browser must take it
    as the PNG it is said to be, never as HTML; so for every answer (nosniff was on none)."""
    job = client.post("/api/v1/jobs", json={**IMG2IMG, "init_image": png_b64()}).get_json()
    page = {"Accept": "text/html"}
    answers = {
        "a page": client.get("/", headers=page),
        "an input image": client.get(f"/api/v1/jobs/{job['id']}/inputs/init_image"),
        "the API": client.get("/api/v1/jobs"),
        "an API error": client.get("/api/v1/jobs/no-such-job"),
        "a static file": client.get("/static/app.js"),
        "the API docs": client.get("/api/v1/docs"),
        "the login page": client.get("/login", headers={"Authorization": ""}),
        "SD-WebUI": client.get("/sdapi/v1/version"),
    }
    for what, resp in answers.items():
        assert resp.status_code < 500, (what, resp.status_code)
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", what
        resp.close()


def test_the_api_docs_page_may_not_be_framed_and_loads_only_from_the_farm(client):
    """It had none of the dashboard pages' headers: no CSP, and any site could frame it."""
    resp = client.get("/api/v1/docs")
    csp = resp.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
    assert resp.headers.get("X-Frame-Options") == "DENY"
