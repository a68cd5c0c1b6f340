"""The model store in an object store (`RENDERFARM_MODELS_URL=s3://bucket/prefix`).

Listing reads manifests only (shared/modelmanifest.py) and never a blob; it is kept for a
few seconds, so the API and the scheduler answer lookups from memory. When the kept listing
is older than that, callers get it at once while one background thread reads it again
(a slow or unreachable store never holds up a heartbeat or a submission), and only
manifests whose ETag changed are read. A name not in the kept listing is looked up with one
GET of its manifest, so a model pushed a moment ago is found at once.

`push` uploads a model folder or file: each distinct file once (blobs already in the store
are skipped), then its manifest, last.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.modelmanifest import (
    Manifest,
    ManifestError,
    ModelFile,
    blob_key,
    manifest_key,
    sha256_file,
)
from shared.modelstore import (
    FAMILIES,
    ModelInfo,
    ModelStore,
    NotAModel,
    entry_name,
    model_files,
    read_cross_attention,
    valid_name,
)
from shared.storage import parse_s3_url, s3_client

log = logging.getLogger(__name__)
LIST_TTL_S = 5.0
# A lookup never waits minutes on a store that does not answer.
CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 30,
    "retries": {"max_attempts": 3, "mode": "standard"},
}
Report = Callable[[str], None]


@dataclass
class _Listing:
    # (family, name) -> (the manifest's ETag, its model)
    models: dict[tuple[str, str], tuple[str, ModelInfo]]
    read_at: float


class S3ModelStore(ModelStore):
    def __init__(self, client: Any, bucket: str, prefix: str, ttl_s: float = LIST_TTL_S) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.ttl_s = ttl_s
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._listing: _Listing | None = None
        self._lock = threading.Lock()
        self._refreshing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ModelStore:
        bucket, prefix = parse_s3_url(settings.models_url, "RENDERFARM_MODELS_URL")
        return cls(s3_client(settings, **CLIENT_CONFIG), bucket, prefix)

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    # -- reading ----------------------------------------------------------------------------

    def _info(self, manifest: Manifest, key: str) -> ModelInfo:
        return ModelInfo(
            manifest.name,
            manifest.family,
            None,
            manifest.kind,
            manifest.size_bytes,
            source=f"s3://{self.bucket}/{key}",
            manifest=manifest,
            cross_attention=manifest.cross_attention,
        )

    def _read_manifest(self, key: str) -> tuple[str, Manifest] | None:
        """(ETag, manifest) at `key`; None if there is none. A manifest that is not valid
        raises ManifestError."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return obj["ETag"], Manifest.from_json(obj["Body"].read(), f"s3://{self.bucket}/{key}")

    def _read_listing(self, previous: _Listing | None) -> _Listing:
        old = previous.models if previous else {}
        models: dict[tuple[str, str], tuple[str, ModelInfo]] = {}
        root = self.key("manifests/")
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root
        )
        for page in pages:
            for obj in page.get("Contents", ()):
                family, _, leaf = obj["Key"][len(root) :].partition("/")
                name = leaf.removesuffix(".json")
                if family not in FAMILIES or not leaf.endswith(".json") or not valid_name(name):
                    continue
                etag = obj["ETag"]
                if (family, name) in old and old[family, name][0] == etag:
                    models[family, name] = old[family, name]
                    continue
                try:
                    found = self._read_manifest(obj["Key"])
                except ManifestError as exc:
                    log.warning("not listed: %s", exc)
                    continue
                if found is None:
                    continue  # deleted since the listing
                etag, manifest = found
                if (manifest.family, manifest.name) != (family, name):
                    log.warning("not listed: %s names %s %r", obj["Key"], manifest.family, name)
                    continue
                models[family, name] = (etag, self._info(manifest, obj["Key"]))
        return _Listing(models, time.monotonic())

    def _refresh_in_background(self) -> None:
        try:
            listing = self._read_listing(self._listing)
        except Exception:  # keep serving the last listing; try again after the TTL
            log.warning("could not list the model store %s", self.location, exc_info=True)
            with self._lock:
                if self._listing is not None:
                    self._listing.read_at = time.monotonic()
                self._refreshing = False
            return
        with self._lock:
            self._listing, self._refreshing = listing, False

    def _current(self) -> dict[tuple[str, str], tuple[str, ModelInfo]]:
        with self._lock:
            listing = self._listing
            if listing is not None:
                if time.monotonic() - listing.read_at > self.ttl_s and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(
                        target=self._refresh_in_background, name="model-listing", daemon=True
                    ).start()
                return listing.models
        # The first listing: read it now (concurrent first callers each read one).
        listing = self._read_listing(None)
        with self._lock:
            if self._listing is None or self._listing.read_at < listing.read_at:
                self._listing = listing
        return listing.models

    def invalidate(self) -> None:
        """Forget the kept listing (after a push from this process)."""
        with self._lock:
            self._listing = None

    def list(self, family: str | None = None) -> list[ModelInfo]:
        models = [info for _, info in self._current().values()]
        order = {fam: i for i, fam in enumerate(FAMILIES)}
        return sorted(
            (m for m in models if family is None or m.family == family),
            key=lambda m: (order[m.family], str(m.manifest.entry) if m.manifest else m.name),
        )

    def names(self, family: str) -> list[str]:
        return [m.name for m in self.list(family)]

    def find(self, name: str, family: str) -> ModelInfo | None:
        if not valid_name(name) or family not in FAMILIES:
            return None
        kept = self._current().get((family, name))
        if kept is not None:
            return kept[1]
        key = self.key(manifest_key(family, name))
        try:
            found = self._read_manifest(key)
        except ManifestError as exc:
            log.warning("not listed: %s", exc)
            return None
        if found is None or (found[1].family, found[1].name) != (family, name):
            return None
        return self._info(found[1], key)

    # -- pushing ------------------------------------------------------------------------------

    def _blob_there(self, sha256: str, size: int) -> bool:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(blob_key(sha256)))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return head["ContentLength"] == size

    def push(
        self, path: Path, family: str, name: str | None = None, report: Report = log.info
    ) -> tuple[Manifest, int]:
        """Upload the model at `path` as `name` (default: its folder or file name); returns
        its manifest and the number of blobs uploaded (the others were in the store).
        NotAModel if `path` is not a model of `family`."""
        kind, files = model_files(path, family)
        name = name or entry_name(path)
        if not valid_name(name):
            raise NotAModel(f"--name {name!r} is not a model name (one path part, not hidden)")
        if path.is_file():  # a single file is stored under its name, as the folder store does
            files = [(name + path.suffix, path)]
        entries, sources = [], {}
        for relative, file in files:
            report(f"hashing {relative}")
            sha = sha256_file(file)
            entries.append(ModelFile(relative, file.stat().st_size, sha))
            sources[sha] = file
        width = read_cross_attention(family, path)
        manifest = Manifest(name, family, kind, tuple(entries), time.time(), width)
        uploaded = 0
        for entry in entries:
            if entry.sha256 not in sources:
                continue  # the same content twice in one model: uploaded once
            file = sources.pop(entry.sha256)
            if self._blob_there(entry.sha256, entry.size):
                report(f"{entry.path}: already in the store")
                continue
            report(f"uploading {entry.path} ({entry.size} bytes)")
            self.client.upload_file(
                str(file),
                self.bucket,
                self.key(blob_key(entry.sha256)),
                ExtraArgs={"ContentType": "application/octet-stream"},
            )
            uploaded += 1
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.key(manifest_key(family, name)),
            Body=manifest.to_json(),
            ContentType="application/json",
        )
        self.invalidate()
        return manifest, uploaded
