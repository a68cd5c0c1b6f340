"""The model store in an object store: push and list, the worker host's fetch cache (one
download per host, verified, resumed, evicted least recently used), and a farm whose worker
has no model folder at all — against moto's S3 server over HTTP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis import Redis

from renderfarm import localfarm
from renderfarm.cli import main as renderfarm
from shared.config import Settings
from shared.modelmanifest import Manifest, blob_key, manifest_key
from shared.modelstore import FAMILIES, LocalModelStore, open_model_store
from shared.s3models import S3ModelStore
from tests.conftest import BUCKET, Farm, s3_client
from tests.faultfarm import TcpProxy, _copy
from worker.modelfetch import ModelFetcher, ModelFetchError, ModelIntegrityError

MODELS_BUCKET = "models"


# --- helpers ------------------------------------------------------------------------------


class FaultyProxy(TcpProxy):
    """A TCP proxy to the S3 server whose responses can be cut (`cut_after`: the next
    `times` connections are closed once they have sent `n` bytes), held (`hold_after`: the
    first connection to send more than `n` bytes stops until `release()`) or slowed
    (`pause_s` after each piece of up to 64 KiB)."""

    def __init__(self, target_port: int, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s
        self.cut_at: int | None = None
        self.cuts_left = 0
        self.hold_at: int | None = None
        self.held = threading.Event()
        self.released = threading.Event()
        self._faults = threading.Lock()
        super().__init__(target_port)

    def cut_after(self, n: int, times: int) -> None:
        self.cut_at, self.cuts_left = n, times

    def hold_after(self, n: int) -> None:
        self.released.clear()
        self.held.clear()
        self.hold_at = n

    def release(self) -> None:
        self.hold_at = None
        self.released.set()

    def _handler(self):
        proxy = self

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                upstream = socket.create_connection(("127.0.0.1", proxy.target_port))
                proxy._open.update((self.request, upstream))
                requests = threading.Thread(
                    target=_copy, args=(self.request, upstream), daemon=True
                )
                requests.start()
                proxy._responses(upstream, self.request)
                requests.join()

        return Pipe

    def _responses(self, src: socket.socket, dst: socket.socket) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                with self._faults:
                    cut = self.cut_at if self.cuts_left > 0 else None
                    if cut is not None and sent + len(data) > cut:
                        self.cuts_left -= 1
                    hold = self.hold_at is not None and sent + len(data) > self.hold_at
                    if hold:
                        self.hold_at = None  # one connection is held, the others go on
                if cut is not None and sent + len(data) > cut:
                    dst.sendall(data[: max(cut - sent, 0)])
                    break
                if hold:
                    self.held.set()
                    self.released.wait()
                dst.sendall(data)
                sent += len(data)
                if self.pause_s:
                    time.sleep(self.pause_s)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def store_settings(s3_env: dict[str, str], prefix: str, **more) -> Settings:
    return Settings(
        models_url=f"s3://{MODELS_BUCKET}/{prefix}",
        s3_endpoint_url=s3_env["RENDERFARM_S3_ENDPOINT_URL"],
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        **more,
    )


def files_of(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file of a model folder (or of one file)."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        f.relative_to(path).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def cache_contents(root: Path) -> dict[str, list[str]]:
    return {sub: sorted(p.name for p in (root / sub).iterdir()) for sub in ("blobs", "models")}


@pytest.fixture(scope="module")
def bucket(s3_env) -> str:
    s3_client(s3_env).create_bucket(Bucket=MODELS_BUCKET)
    return MODELS_BUCKET


@pytest.fixture
def prefix(bucket) -> str:
    """A store of this test's own under the models bucket."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pushed(s3_env, prefix, models_dir) -> Iterator[tuple[Settings, S3ModelStore]]:
    """A store holding every model of the folder store, pushed."""
    settings = store_settings(s3_env, prefix)
    store = S3ModelStore.from_settings(settings)
    for model in LocalModelStore(models_dir).list():
        store.push(model.path, model.family, report=lambda _: None)
    yield settings, store


def fetcher(settings: Settings, cache: Path, budget: int = 1 << 30, **more) -> ModelFetcher:
    """A worker host's fetcher with its own S3 client, as each worker process has."""
    store = S3ModelStore.from_settings(settings)
    return ModelFetcher(store.client, store.bucket, store.prefix, cache, budget, **more)


def manifest(store: S3ModelStore, name: str, family: str) -> Manifest:
    found = store.find(name, family)
    assert found is not None and found.manifest is not None, f"{family} {name} not in the store"
    return found.manifest


# --- push and list ------------------------------------------------------------------------


def test_pushed_models_list_as_the_folder_store_lists_them(pushed, models_dir, s3_env):
    settings, store = pushed
    local = LocalModelStore(models_dir)
    # What every process sees: the same names, families, kinds and sizes as the folder.
    fresh = open_model_store(settings)
    assert [m.as_dict() for m in fresh.list()] == [m.as_dict() for m in local.list()]
    for family in FAMILIES:
        assert fresh.names(family) == local.names(family)
        assert [m.as_dict() for m in fresh.list(family)] == [
            m.as_dict() for m in local.list(family)
        ]
    found = fresh.find("demo-sd15", "checkpoint")
    assert found is not None and found.path is None  # listed, not downloaded
    assert (
        found.source == f"s3://{MODELS_BUCKET}/{store.prefix}/manifests/checkpoint/demo-sd15.json"
    )
    assert fresh.find("demo-sd15", "vae") is None and fresh.find("../x", "checkpoint") is None
    # What a submission checks a ControlNet against, carried by the manifests as read on push.
    widths = {(m.name, m.family): m.cross_attention for m in local.list() if m.cross_attention}
    assert widths == {
        ("demo-sd15", "checkpoint"): 32,
        ("demo-sdxl", "checkpoint"): 64,
        ("demo-controlnet-sd15", "controlnet"): 32,
    }
    assert {(m.name, m.family): m.cross_attention for m in fresh.list() if m.cross_attention} == (
        widths
    )
    # Single-file upscalers keep their file name; folders their relative paths.
    esrgan = manifest(fresh, "demo-esrgan-x4", "upscaler")
    assert [f.path for f in esrgan.files] == ["demo-esrgan-x4.safetensors"]
    sd15 = manifest(fresh, "demo-sd15", "checkpoint")
    assert {f.path: f.sha256 for f in sd15.files} == files_of(models_dir / "checkpoints/demo-sd15")

    # Each distinct content is one blob: files shared by models (tokenizers, configs) once.
    client = s3_client(s3_env)
    listing = client.list_objects_v2(Bucket=MODELS_BUCKET, Prefix=f"{store.prefix}/blobs/")
    blobs = {o["Key"].rsplit("/", 1)[1]: o["Size"] for o in listing["Contents"]}
    named = {f.sha256: f.size for m in fresh.list() for f in m.manifest.files}
    assert blobs == named
    assert sum(len(m.manifest.files) for m in fresh.list()) > len(blobs)  # some were shared


def test_push_uploads_only_what_the_store_lacks_and_writes_the_manifest_last(
    s3_env, prefix, bucket, models_dir
):
    store = S3ModelStore.from_settings(store_settings(s3_env, prefix))
    said: list[str] = []
    sd15, uploaded = store.push(
        models_dir / "checkpoints/demo-sd15", "checkpoint", report=said.append
    )
    assert uploaded == len({f.sha256 for f in sd15.files})
    # demo-sdxl shares demo-sd15's tokenizer and text encoder config: those are skipped, and
    # its two copies of tokenizer.json are one upload.
    sdxl, uploaded = store.push(
        models_dir / "checkpoints/demo-sdxl", "checkpoint", report=said.append
    )
    shared = {f.sha256 for f in sdxl.files} & {f.sha256 for f in sd15.files}
    assert shared and uploaded == len({f.sha256 for f in sdxl.files} - shared)
    assert "tokenizer/tokenizer.json: already in the store" in said
    # The same model again: nothing uploaded, the same identity.
    again, uploaded = store.push(models_dir / "checkpoints/demo-sd15", "checkpoint")
    assert uploaded == 0 and again.digest == sd15.digest

    # Blobs without a manifest (a push that died half-way) are never listed.
    client = s3_client(s3_env)
    client.put_object(Bucket=bucket, Key=f"{prefix}/{blob_key('0' * 64)}", Body=b"half")
    assert store.names("checkpoint") == ["demo-sd15", "demo-sdxl"]


def test_a_manifest_that_cannot_be_trusted_is_not_listed(s3_env, prefix, bucket, models_dir):
    store = S3ModelStore.from_settings(store_settings(s3_env, prefix))
    good, _ = store.push(models_dir / "upscalers/demo-aura-sr", "upscaler")
    doc, first = good.as_dict(), good.as_dict()["files"][0]
    bad = {
        # Its files land on a worker's disk: none may leave the model's folder.
        "escapes": {**doc, "name": "escapes", "files": [{**first, "path": "../../etc/x"}]},
        "renamed": {**doc, "name": "somebody-else"},  # not the name it is stored under
        "short-hash": {**doc, "name": "short-hash", "files": [{**first, "sha256": "abc"}]},
    }
    client = s3_client(s3_env)
    for name, body in bad.items():
        key = f"{prefix}/{manifest_key('upscaler', name)}"
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
    key = f"{prefix}/{manifest_key('upscaler', 'not-json')}"
    client.put_object(Bucket=bucket, Key=key, Body=b"{")
    fresh = S3ModelStore.from_settings(store_settings(s3_env, prefix))
    assert fresh.names("upscaler") == ["demo-aura-sr"]
    for name in (*bad, "not-json"):
        assert fresh.find(name, "upscaler") is None, name
    with pytest.raises(ValueError, match=r"files\.0\.path must be a relative path inside"):
        Manifest.from_json(json.dumps(bad["escapes"]).encode(), "escapes.json")


def test_the_models_commands_push_and_list(s3_env, prefix, bucket, models_dir, monkeypatch, capsys):
    for name, value in {**s3_env, "RENDERFARM_MODELS_URL": f"s3://{bucket}/{prefix}"}.items():
        monkeypatch.setenv(name, value)
    vae = models_dir / "vae/demo-vae-sd15"
    assert renderfarm(["models", "push", str(vae), "--family", "vae", "--name", "team-vae"]) == 0
    out = capsys.readouterr().out
    assert "pushed vae 'team-vae' (AutoencoderKL, 1.5 MB, 2 files, 2 uploaded)" in out
    assert renderfarm(["models", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"model store: s3://{bucket}/{prefix}"
    assert out[1].split() == ["NAME", "FAMILY", "KIND", "SIZE"]
    assert out[2].split() == ["team-vae", "vae", "AutoencoderKL", "1.5", "MB"]

    # Not a model of that family: a clear error naming the path and what was expected.
    for path, family, expected in [
        (vae, "checkpoint", f"{vae} is not a checkpoint model: expected a diffusers pipeline"),
        (models_dir / "nope", "vae", "no such file or folder"),
        (vae / "config.json", "upscaler", "expected a .safetensors/.pth/.pt file or an AuraSR"),
    ]:
        assert renderfarm(["models", "push", str(path), "--family", family]) == 1
        assert expected in capsys.readouterr().err
    assert renderfarm(["models", "push", str(vae), "--family", "vae", "--name", ".x"]) == 1
    assert "is not a model name" in capsys.readouterr().err
    assert S3ModelStore.from_settings(store_settings(s3_env, prefix)).names("vae") == ["team-vae"]

    # The folder store lists the same way; push says where the model goes instead.
    monkeypatch.delenv("RENDERFARM_MODELS_URL")
    monkeypatch.setenv("RENDERFARM_MODELS_DIR", str(models_dir))
    assert renderfarm(["models", "list", "--family", "upscaler"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["demo-esrgan-x4", "upscaler", "spandrel", "908.3", "KB"] in rows
    assert renderfarm(["models", "push", str(vae), "--family", "vae"]) == 1
    assert "RENDERFARM_MODELS_URL is not set" in capsys.readouterr().err


# --- the worker host's cache --------------------------------------------------------------


def _fetch_in_child(settings: dict, cache: str, name: str, family: str, start, results) -> None:
    """One worker process: its own S3 client and fetcher, the host's shared cache."""
    store = S3ModelStore.from_settings(Settings(**settings))
    mine = ModelFetcher(store.client, store.bucket, store.prefix, Path(cache), 1 << 30)
    model = manifest(store, name, family)
    start.wait()
    with mine.hold(model) as path:
        results.put((str(path), mine.stats(), files_of(path)))


def test_two_workers_on_one_host_download_each_blob_once(pushed, models_dir, tmp_path, s3_env):
    settings, store = pushed
    sd15 = manifest(store, "demo-sd15", "checkpoint")
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    # A slow link (the UNet's 4 MB take about a second): both workers want the same blobs
    # at the same time.
    proxy = FaultyProxy(int(s3_env["RENDERFARM_S3_ENDPOINT_URL"].rsplit(":", 1)[1]), 0.01)
    plain = {
        "models_url": settings.models_url,
        "s3_endpoint_url": f"http://127.0.0.1:{proxy.port}",
        "s3_access_key_id": "testing",
        "s3_secret_access_key": "testing",
    }
    workers = [
        ctx.Process(
            target=_fetch_in_child,
            args=(plain, str(tmp_path / "cache"), "demo-sd15", "checkpoint", start, results),
        )
        for _ in range(2)
    ]
    try:
        for p in workers:
            p.start()
        got = [results.get(timeout=120) for _ in workers]
        for p in workers:
            p.join(30)
            assert p.exitcode == 0
    finally:
        proxy.pause()
    paths = {path for path, _, _ in got}
    assert len(paths) == 1  # one folder, keyed by the manifest: the same cache key for both
    distinct = len({f.sha256 for f in sd15.files})
    assert sum(stats["downloads"] for _, stats, _ in got) == distinct
    assert sum(stats["requests"] for _, stats, _ in got) == distinct  # one GET per blob
    expected = files_of(models_dir / "checkpoints/demo-sd15")
    assert all(files == expected for _, _, files in got)
    assert Path(paths.pop()).parent.name == "checkpoints"  # laid out as the folder store


def test_a_fetched_model_loads_with_the_usual_loaders(pushed, tmp_path):
    import torch

    from worker.pipelines import load_pipeline
    from worker.upscalers import load_upscaler

    settings, store = pushed
    host = fetcher(settings, tmp_path / "cache")
    with host.hold(manifest(store, "demo-sd15", "checkpoint")) as path:
        info = replace(store.find("demo-sd15", "checkpoint"), path=path)
        assert load_pipeline(info, "cpu", torch.float32).pipe.unet is not None
    with host.hold(manifest(store, "demo-esrgan-x4", "upscaler")) as path:
        assert path.name == "demo-esrgan-x4.safetensors"
        assert load_upscaler(path).family == "ESRGAN"
    with host.hold(manifest(store, "demo-aura-sr", "upscaler")) as path:
        assert load_upscaler(path).family == "AuraSR"


@pytest.mark.parametrize("damage", ["other bytes", "truncated"])
def test_a_corrupt_blob_is_refused_and_nothing_is_kept(pushed, tmp_path, s3_env, damage):
    settings, store = pushed
    model = manifest(store, "demo-esrgan-x4", "upscaler")
    blob = model.files[0]
    key = f"{store.prefix}/{blob_key(blob.sha256)}"
    client = s3_client(s3_env)
    original = client.get_object(Bucket=MODELS_BUCKET, Key=key)["Body"].read()
    bad = bytes(b ^ 0xFF for b in original) if damage == "other bytes" else original[:1000]
    client.put_object(Bucket=MODELS_BUCKET, Key=key, Body=bad)
    host = fetcher(settings, tmp_path / "cache")
    with pytest.raises(ModelIntegrityError) as refused, host.hold(model):
        pytest.fail("a corrupt model was handed out")
    reason = str(refused.value)
    assert "upscaler 'demo-esrgan-x4' file demo-esrgan-x4.safetensors" in reason
    assert ("does not match its manifest" if damage == "other bytes" else "is 1000 bytes") in reason
    assert cache_contents(tmp_path / "cache") == {"blobs": [], "models": []}
    assert not host.is_ready(model)


def test_a_cut_connection_is_resumed(pushed, models_dir, tmp_path, s3_env):
    settings, store = pushed
    model = manifest(store, "demo-controlnet-sd15", "controlnet")
    port = int(s3_env["RENDERFARM_S3_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = FaultyProxy(port)
    try:
        through = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{proxy.port}"})
        host = fetcher(through, tmp_path / "cache", backoff_s=0.05)
        # The weights (2 MB) are cut after 1.5 MB: the first MiB arrived, the rest is asked
        # for with a Range request.
        proxy.cut_after(1_500_000, times=1)
        with host.hold(model) as path:
            assert files_of(path) == files_of(models_dir / "controlnet/demo-controlnet-sd15")
        stats = host.stats()
        assert stats["retries"] == 1 and stats["requests"] == len(model.files) + 1
        assert stats["bytes_downloaded"] == model.size_bytes  # resumed: no byte twice

        # A connection that never lets a file through fails the fetch, naming it.
        esrgan = manifest(store, "demo-esrgan-x4", "upscaler")
        proxy.cut_after(2000, times=100)
        refused = pytest.raises(ModelFetchError, match="demo-esrgan-x4.safetensors after 5 tries")
        with refused, host.hold(esrgan):
            pytest.fail("a model that never arrived was handed out")
        assert not host.is_ready(esrgan)
        assert not [p for p in (tmp_path / "cache/blobs").iterdir() if ".incomplete-" in p.name]
    finally:
        proxy.pause()


def test_eviction_removes_least_recently_used_blobs(pushed, tmp_path):
    settings, store = pushed
    a = manifest(store, "demo-controlnet-sd15", "controlnet")  # 2.0 MB
    b = manifest(store, "demo-esrgan-x4", "upscaler")  # 0.9 MB
    c = manifest(store, "demo-vae-sdxl", "vae")  # 1.5 MB
    host = fetcher(settings, tmp_path / "cache", budget=3_500_000)
    for m in (a, b, a):  # a used again: b is now the least recently used
        with host.hold(m):
            pass
    with host.hold(c) as path:
        assert path.is_dir()
    assert host.is_ready(a) and host.is_ready(c) and not host.is_ready(b)
    blobs = set(cache_contents(tmp_path / "cache")["blobs"])
    assert blobs == {f.sha256 for f in a.files + c.files}
    assert host.stats()["bytes_in_use"] <= 3_500_000


def test_eviction_never_removes_a_model_in_use(pushed, tmp_path):
    settings, store = pushed
    a = manifest(store, "demo-controlnet-sd15", "controlnet")
    b = manifest(store, "demo-esrgan-x4", "upscaler")
    c = manifest(store, "demo-vae-sdxl", "vae")
    # Two worker processes of one host: one runs a job with `a` while the other fetches.
    one = fetcher(settings, tmp_path / "cache", budget=1_000_000)
    other = fetcher(settings, tmp_path / "cache", budget=1_000_000)
    with one.hold(a) as held:  # larger than the budget, and in use
        before = files_of(held)
        for m in (b, c):
            with other.hold(m):
                pass
        assert files_of(held) == before  # none of its blobs went
        assert not other.is_ready(b)  # b was not in use any more: it made room for c
    one.evict()  # nothing in use: back under the budget
    assert one.stats()["bytes_in_use"] <= 1_000_000
    assert not one.is_ready(a)


# --- a farm whose worker has no model folder ---------------------------------------------


def test_a_farm_renders_from_the_object_store_showing_the_fetch(pushed, s3_env, tmp_path, bucket):
    settings, store = pushed
    sd15 = manifest(store, "demo-sd15", "checkpoint")
    redis_port = localfarm.free_port()
    redis_proc = localfarm.start_redis(redis_port, tmp_path / "redis")
    # The worker reaches S3 through a slow link (at most 64 KiB per 0.08 s: demo-sd15's
    # 5.6 MB take at least 6.9 s, longer than its stall limit) that can also hold a download.
    proxy = FaultyProxy(int(s3_env["RENDERFARM_S3_ENDPOINT_URL"].rsplit(":", 1)[1]), 0.08)
    logs = tmp_path / "logs"
    logs.mkdir()
    cache = tmp_path / "model-cache"
    env = {
        **s3_env,
        "RENDERFARM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "RENDERFARM_STORAGE_URL": f"s3://{BUCKET}/models-farm",
        "RENDERFARM_MODELS_URL": settings.models_url,
        "RENDERFARM_MODELS_DIR": str(tmp_path / "no-such-folder"),
        "RENDERFARM_MODEL_CACHE_DIR": str(cache),
    }
    worker_env = {
        **env,
        "RENDERFARM_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
        "RENDERFARM_STALL_S": "5",
    }
    port = localfarm.free_port()
    procs = [
        localfarm.start_scheduler(env, log=logs / "scheduler.log"),
        localfarm.start_worker("cpu", worker_env, log=logs / "worker.log"),
    ]
    try:
        procs.append(localfarm.start_dashboard("127.0.0.1", port, env, log=logs / "dashboard.log"))
        farm = Farm(f"http://127.0.0.1:{port}", env, Redis(port=redis_port), logs, procs)
        # What the worker can run comes from the manifests: the dispatcher routes by it.
        name = farm.cpu_worker(timeout=120)
        beat = next(w for w in farm.redis_workers() if w["name"] == name)
        assert beat["store"]["checkpoint"] == ["broken-model", "demo-sd15", "demo-sdxl"]
        models = farm.client.request("GET", "/api/v1/models").json()["models"]
        assert {m["name"]: m["size_bytes"] for m in models}["demo-sd15"] == sd15.size_bytes

        proxy.hold_after(1_500_000)  # inside the UNet's weights
        job = farm.submit(prompt="fetched", model="demo-sd15", width=64, height=64, steps=2)
        localfarm.wait_for(proxy.held.is_set, 60, "the worker's download")

        def fetching() -> bool:  # the download is held: the note stays until it goes on
            return (farm.job(job["id"])["note"] or "").startswith("fetching model demo-sd15 (")

        localfarm.wait_for(fetching, 30, "the note 'fetching model demo-sd15 (N%)'")
        assert farm.job(job["id"])["status"] == "running"
        proxy.release()
        done = farm.wait(job["id"], timeout=120)
        assert done["status"] == "succeeded", done["error"]
        assert len(done["outputs"]) == 1 and done["note"] is None  # the note went with the fetch
        # Arriving bytes kept it alive: never given up by the watchdog, one attempt.
        assert done["attempts"] == 1 and len(done["attempts_history"]) == 1
        beat = farm.beat_after(done)
        assert [(m["name"], m["family"]) for m in beat["models"]] == [("demo-sd15", "checkpoint")]
        assert beat["model_fetch"]["downloads"] == len({f.sha256 for f in sd15.files})

        # The next job finds the model on this host (and in memory): nothing is downloaded.
        again = farm.submit(prompt="again", model="demo-sd15", width=64, height=64, steps=2)
        again = farm.wait(again["id"], timeout=120)
        assert again["status"] == "succeeded", again["error"]
        assert farm.beat_after(again)["model_fetch"]["requests"] == beat["model_fetch"]["requests"]

        # A file whose bytes are not its manifest's: the job fails saying which, the model is
        # never loaded, nothing of it is kept, and the worker goes on.
        sdxl = manifest(store, "demo-sdxl", "checkpoint")
        config = next(f for f in sdxl.files if f.path == "unet/config.json")
        key = f"{store.prefix}/{blob_key(config.sha256)}"
        original = s3_client(s3_env).get_object(Bucket=bucket, Key=key)["Body"].read()
        s3_client(s3_env).put_object(Bucket=bucket, Key=key, Body=b"x" * config.size)
        bad = farm.submit(prompt="corrupt", model="demo-sdxl", width=64, height=64, steps=2)
        bad = farm.wait(bad["id"], timeout=120)
        assert bad["status"] == "failed" and bad["note"] is None
        assert (
            "checkpoint 'demo-sdxl' file unet/config.json does not match its manifest"
            in (bad["error"])
        )
        assert sdxl.digest not in {p.stem for p in (cache / "models").iterdir()}
        assert config.sha256 not in {p.name[:64] for p in (cache / "blobs").iterdir()}
        beat = farm.beat_after(bad)
        assert [m["name"] for m in beat["models"]] == ["demo-sd15"]

        # Canceled while its model downloads: it stops there, and nothing half-done is kept.
        s3_client(s3_env).put_object(Bucket=bucket, Key=key, Body=original)
        proxy.hold_after(1_000_000)  # only the fetching connection carries that much
        stop = farm.submit(prompt="never mind", model="demo-sdxl", width=64, height=64, steps=2)
        localfarm.wait_for(proxy.held.is_set, 60, "the worker's download")
        farm.client.cancel(stop["id"])
        proxy.release()
        stop = farm.wait(stop["id"], timeout=120)
        assert stop["status"] == "canceled" and stop["note"] is None
        assert not [p for p in (cache / "blobs").iterdir() if ".incomplete-" in p.name]
        assert sdxl.digest not in {p.stem for p in (cache / "models").iterdir()}
        farm.client.close()
    finally:
        proxy.release()
        localfarm.stop(*procs)
        localfarm.stop(redis_proc)
        proxy.pause()
