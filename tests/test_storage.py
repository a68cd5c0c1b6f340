"""Both storage backends keep what is put, at the same keys."""

import base64
import io

import pytest
from PIL import Image
from redis import Redis

from renderfarm import localfarm
from shared.client import FarmClient
from shared.config import Settings
from shared.storage import FileStorage, ObjectNotFound, S3Storage, open_storage
from tests.conftest import BUCKET
from tests.signin import account_token


def roundtrip(storage):
    assert not storage.exists("jobs/a/image-0.png")
    storage.put("jobs/a/image-0.png", b"\x89PNG data", "image/png")
    assert storage.exists("jobs/a/image-0.png")
    assert storage.get("jobs/a/image-0.png") == b"\x89PNG data"
    storage.put("jobs/a/image-0.png", b"second", "image/png")
    assert storage.get("jobs/a/image-0.png") == b"second"
    with pytest.raises(ObjectNotFound):
        storage.get("jobs/missing.png")
    assert 0 <= storage.age_s("jobs/a/image-0.png") < 60
    assert storage.age_s("jobs/missing.png") is None
    # A key, then a folder (a key ending in /): everything under it, and nothing beside it.
    for key in ("jobs/a/1/image-0.png", "jobs/a/1/manifest.json", "jobs/ab/image-0.png"):
        storage.put(key, b"x", "image/png")
    assert storage.delete("jobs/a/image-0.png") == 1
    assert not storage.exists("jobs/a/image-0.png")
    assert storage.delete("jobs/a/image-0.png") == 0, "deleting what is gone is no error"
    assert storage.delete("jobs/a/") == 2
    assert not storage.exists("jobs/a/1/manifest.json") and storage.exists("jobs/ab/image-0.png")
    assert storage.delete("jobs/none/") == 0


def test_file_storage(tmp_path):
    storage = open_storage(Settings(storage_url=f"file://{tmp_path}"))
    assert isinstance(storage, FileStorage)
    roundtrip(storage)
    assert (tmp_path / "jobs/ab/image-0.png").read_bytes() == b"x"
    assert not (tmp_path / "jobs/a").exists(), "a deleted folder is gone, not left empty"
    assert not list(tmp_path.rglob(".part-*")), "no temporary files left behind"


def test_file_storage_refuses_keys_outside_its_root(tmp_path):
    storage = FileStorage(tmp_path / "root")
    with pytest.raises(ValueError, match="escapes"):
        storage.put("../outside.png", b"x", "image/png")


def test_s3_storage_through_a_real_s3_endpoint(s3_env):
    settings = Settings(
        storage_url=f"s3://{BUCKET}/unit",
        s3_endpoint_url=s3_env["RENDERFARM_S3_ENDPOINT_URL"],
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage)
    roundtrip(storage)
    # More objects than one listing page (and one DeleteObjects) holds.
    for i in range(1005):
        storage.client.put_object(Bucket=BUCKET, Key=f"unit/jobs/many/{i}.png", Body=b"x")
    assert storage.delete("jobs/many/") == 1005
    listed = storage.client.list_objects_v2(Bucket=BUCKET, Prefix="unit/jobs/many/")
    assert listed["KeyCount"] == 0


@pytest.mark.parametrize("url", ["ftp://x/y", "s3:///no-bucket", "/plain/path"])
def test_bad_storage_urls_are_refused(url):
    with pytest.raises(ValueError, match="RENDERFARM_STORAGE_URL"):
        open_storage(Settings(storage_url=url))


@pytest.mark.parametrize("down", ["results", "models"])
def test_an_unreachable_object_store_is_a_503_with_the_reason(
    down, redis_url, models_dir, tmp_path
):
    """The dashboard with its S3 endpoint down: a submission that needs the results' store (an
    input image to keep) or the model store (a model it has not listed yet) is refused with
    503, the reason and Retry-After, never a bare 500."""
    url = redis_url.rsplit("/", 1)[0] + "/6"
    Redis.from_url(url).flushdb()
    endpoint = f"http://127.0.0.1:{localfarm.free_port()}"  # nothing listens there
    env = {
        "RENDERFARM_REDIS_URL": url,
        "RENDERFARM_STORAGE_URL": f"s3://{BUCKET}/down",
        "RENDERFARM_MODELS_DIR": str(models_dir),
        "RENDERFARM_S3_ENDPOINT_URL": endpoint,
        "RENDERFARM_S3_ACCESS_KEY_ID": "testing",
        "RENDERFARM_S3_SECRET_ACCESS_KEY": "testing",
        "RENDERFARM_S3_REGION": "us-east-1",
        "RENDERFARM_HTTP_PROCESSES": "1",
    }
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    spec = {
        "kind": "upscale",
        "image": base64.b64encode(buf.getvalue()).decode(),
        "upscaler": "demo-esrgan-x4",
        "scale": 2,
    }
    if down == "models":
        env["RENDERFARM_MODELS_URL"] = f"s3://{BUCKET}/down-models"
        spec = {"prompt": "a model", "model": "demo-sd15", "width": 64, "height": 64}
    port = localfarm.free_port()
    proc = localfarm.start_dashboard("127.0.0.1", port, env, log=tmp_path / "dashboard.log")
    client = FarmClient(f"http://127.0.0.1:{port}", account_token(Redis.from_url(url), "op"))
    try:
        resp = client.request("POST", "/api/v1/jobs", json=spec)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"].startswith("object storage unreachable"), resp.text
        assert endpoint in resp.json()["error"] and int(resp.headers["Retry-After"]) > 0
        documented = client.request("GET", "/api/v1/openapi.json").json()["paths"]
        assert "503" in documented["/api/v1/jobs"]["post"]["responses"]  # as answered
    finally:
        client.close()
        localfarm.stop(proc)
