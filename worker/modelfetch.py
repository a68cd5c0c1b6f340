"""A worker host's disk cache of models fetched from an object-store model store.

Shared by every worker process on the host (one `RENDERFARM_MODEL_CACHE_DIR`):

    blobs/<sha256>                       verified file contents (read-only), one per content
    blobs/<sha256>.incomplete-<random>   a download under way
    models/<digest>/<family folder>/<name>...   a fetched model as the loaders expect it:
                                         links (hard, else symbolic) to its blobs
    models/<digest>.json                 its manifest; its mtime: when the model was last
                                         taken into use or released
    locks/                               blob-<sha256>.lock, model-<digest>.lock (one writer
                                         each), inuse-<digest>.lock (shared while in use),
                                         cache.lock (eviction and taking a model into use)

`<digest>` is the manifest's hash (name, kind, files): the folder's path stays the same for
the same model, so the worker's in-memory cache key (the path) is stable across fetches,
and a model pushed again with other files gets a new folder.

A blob is downloaded under its file lock (so workers on one host download it once) to a
unique temporary name while it is hashed, resumed with a Range request when the connection
drops, checked for size and SHA-256, and only then renamed into place: a truncated or
corrupt download is never used, and is refused with the model's and the file's names.

Eviction (the budget `RENDERFARM_MODEL_CACHE_MB`): before a download, the least recently
used blobs are removed until the cache fits its budget with the incoming bytes, except the
blobs of any model in use — a model is in use from `hold()` until the block ends (a job
holds its models until it ends), by any process on the host (a shared flock). A blob's last
use is the latest use of a model that links to it (a blob no model links to: its download).
A removed blob's models are removed with it. Models in use may take the cache over its
budget (never is one evicted); the next download brings it back within.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from shared.config import Settings
from shared.modelmanifest import CHUNK, Manifest, ManifestError, ModelFile, blob_key
from shared.storage import parse_s3_url, s3_client

log = logging.getLogger(__name__)
OnBytes = Callable[[int, int], None]  # (bytes arrived for this model, bytes it needs)
CLIENT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 60,
    "retries": {"max_attempts": 3, "mode": "standard"},
}
INCOMPLETE = ".incomplete-"
PARTIAL = ".partial-"


class ModelFetchError(RuntimeError):
    """A model could not be fetched; the message is the reason a job shows."""


class ModelIntegrityError(ModelFetchError):
    """A downloaded file is not what its manifest says: it is never used."""


def _retryable() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError
    from urllib3.exceptions import HTTPError

    return (BotoCoreError, HTTPError, ConnectionError, TimeoutError)


class _Progress:
    """Bytes arrived for one model, reported only when they grow."""

    def __init__(self, total: int, on_bytes: OnBytes | None) -> None:
        self.total, self.done, self.on_bytes = total, 0, on_bytes

    def reached(self, done: int) -> None:
        if done > self.done:
            self.done = done
            if self.on_bytes is not None:
                self.on_bytes(done, self.total)


class ModelFetcher:
    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        cache_dir: Path,
        budget_bytes: int,
        tries: int = 5,
        backoff_s: float = 0.5,
    ) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"the model cache budget must be above 0 bytes, got {budget_bytes}")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = cache_dir.resolve()
        self.budget_bytes = budget_bytes
        self.tries = tries
        self.backoff_s = backoff_s
        for sub in ("blobs", "models", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # What this fetcher did (the heartbeat and the tests read them).
        self.downloads = 0  # blobs downloaded by this process
        self.bytes_downloaded = 0
        self.requests = 0  # GET requests for blobs, retries included
        self.retries = 0
        self.evicted = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelFetcher:
        bucket, prefix = parse_s3_url(settings.models_url, "RENDERFARM_MODELS_URL")
        if settings.model_cache_mb <= 0:
            raise ValueError(
                f"RENDERFARM_MODEL_CACHE_MB must be above 0, got {settings.model_cache_mb}"
            )
        return cls(
            s3_client(settings, **CLIENT_CONFIG),
            bucket,
            prefix,
            settings.model_cache_dir,
            settings.model_cache_mb * 1024 * 1024,
        )

    def stats(self) -> dict[str, int]:
        return {
            "downloads": self.downloads,
            "bytes_downloaded": self.bytes_downloaded,
            "requests": self.requests,
            "retries": self.retries,
            "evicted": self.evicted,
            "budget_bytes": self.budget_bytes,
            "bytes_in_use": sum(size for size, _ in self._blobs().values()),
        }

    # -- paths ----------------------------------------------------------------------------------

    def _blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def _lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def _folder(self, manifest: Manifest) -> Path:
        return self.root / "models" / manifest.digest

    def _record(self, digest: str) -> Path:
        return self.root / "models" / f"{digest}.json"

    def path_of(self, manifest: Manifest) -> Path:
        """Where the model is (or will be) on this host: the path its loaders read."""
        return self._folder(manifest) / manifest.entry

    def is_ready(self, manifest: Manifest) -> bool:
        return self._folder(manifest).is_dir()

    def _has_blob(self, f: ModelFile) -> bool:
        try:
            return self._blob(f.sha256).stat().st_size == f.size
        except FileNotFoundError:
            return False

    # -- in use ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def hold(self, manifest: Manifest, on_bytes: OnBytes | None = None) -> Iterator[Path]:
        """The model on this host's disk (downloaded first if needed), kept from eviction by
        every process on the host until the block ends. ModelFetchError if it cannot be."""
        fd = self._take(manifest)
        try:
            self._ensure(manifest, on_bytes)
            yield self.path_of(manifest)
        finally:
            self._touch(manifest.digest)  # used until now
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            if not self.is_ready(manifest):
                self._forget_if_unused(manifest.digest)

    def _take(self, manifest: Manifest) -> int:
        """Mark the model in use (a shared flock) and record its manifest and last use, in
        one step with respect to eviction."""
        with FileLock(self._lock("cache")):
            record = self._record(manifest.digest)
            if not record.is_file():
                tmp = record.with_name(f"{record.name}{PARTIAL}{uuid.uuid4().hex}")
                tmp.write_bytes(manifest.to_json())
                os.replace(tmp, record)
            self._touch(manifest.digest)
            fd = os.open(self._lock(f"inuse-{manifest.digest}"), os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_SH)
            return fd

    def _touch(self, digest: str) -> None:
        """Record a use: the record's mtime, set from the clock (a file system's own
        timestamps are only as fine as the kernel's tick)."""
        now = time.time_ns()
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._record(digest), ns=(now, now))

    def _in_use(self, digest: str) -> bool:
        path = self._lock(f"inuse-{digest}")
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases the probe's lock
        return False

    def _forget_if_unused(self, digest: str) -> None:
        """A model whose fetch failed leaves no record behind (unless another holds it)."""
        with FileLock(self._lock("cache")):
            if not self._in_use(digest) and not (self.root / "models" / digest).is_dir():
                self._record(digest).unlink(missing_ok=True)
                self._lock(f"inuse-{digest}").unlink(missing_ok=True)

    # -- fetching ------------------------------------------------------------------------------

    def _ensure(self, manifest: Manifest, on_bytes: OnBytes | None) -> None:
        if self.is_ready(manifest):
            return
        unique = list({f.sha256: f for f in manifest.files}.values())
        missing = [f for f in unique if not self._has_blob(f)]
        progress = _Progress(sum(f.size for f in missing), on_bytes)
        if missing:
            if manifest.size_bytes > self.budget_bytes:
                log.warning(
                    "%s %r (%d bytes) is larger than the model cache budget (%d bytes)",
                    manifest.family,
                    manifest.name,
                    manifest.size_bytes,
                    self.budget_bytes,
                )
            self.evict(incoming=progress.total)
            if on_bytes is not None:
                on_bytes(0, progress.total)
        base = 0
        for f in missing:
            self._fetch_blob(manifest, f, progress, base)
            base += f.size
            progress.reached(base)
        self._materialise(manifest)

    def _fetch_blob(self, manifest: Manifest, f: ModelFile, progress: _Progress, base: int) -> None:
        """Download one blob once per host: under its lock; a process that waits for another's
        download sees its bytes arrive (they count as this job's progress too)."""
        lock = FileLock(self._lock(f"blob-{f.sha256}"))
        seen = 0
        while True:
            try:
                lock.acquire(timeout=1)
                break
            except Timeout:
                now = self._incomplete_bytes(f.sha256)
                if now > seen:
                    seen = now
                    progress.reached(base + now)
        try:
            if self._has_blob(f):
                return  # another worker on this host downloaded it
            self._blob(f.sha256).unlink(missing_ok=True)  # wrong size: not ours to trust
            self._download(manifest, f, progress, base)
        finally:
            lock.release()

    def _incomplete_bytes(self, sha256: str) -> int:
        """How far another process's download of this blob has come."""
        total = 0
        for p in (self.root / "blobs").glob(f"{sha256}{INCOMPLETE}*"):
            with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
                total += p.stat().st_size
        return total

    def _download(self, manifest: Manifest, f: ModelFile, progress: _Progress, base: int) -> None:
        what = f"{manifest.family} {manifest.name!r} file {f.path}"
        key = f"{self.prefix}/{blob_key(f.sha256)}" if self.prefix else blob_key(f.sha256)
        tmp = self.root / "blobs" / f"{f.sha256}{INCOMPLETE}{uuid.uuid4().hex}"
        retryable = _retryable()
        digest, have, tries = hashlib.sha256(), 0, 0
        try:
            with tmp.open("wb") as out:
                while have < f.size or not have:
                    try:
                        args = {"Bucket": self.bucket, "Key": key}
                        if have:
                            args["Range"] = f"bytes={have}-"
                        self.requests += 1
                        obj = self.client.get_object(**args)
                        if have and not obj.get("ContentRange"):  # range ignored: start again
                            out.seek(0)
                            out.truncate()
                            digest, have = hashlib.sha256(), 0
                        for chunk in obj["Body"].iter_chunks(CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            have += len(chunk)
                            self.bytes_downloaded += len(chunk)
                            if have > f.size:
                                raise ModelIntegrityError(
                                    f"{what} is larger than its manifest says ({f.size} bytes): "
                                    "refused"
                                )
                            progress.reached(base + have)
                        break
                    except self.client.exceptions.NoSuchKey:
                        raise ModelFetchError(
                            f"{what}: its blob {key} is missing from the model store"
                        ) from None
                    except retryable as exc:
                        tries += 1
                        if tries >= self.tries:
                            raise ModelFetchError(
                                f"could not download {what} after {tries} tries: {exc}"
                            ) from exc
                        self.retries += 1
                        delay = self.backoff_s * 2 ** (tries - 1)
                        log.warning(
                            "downloading %s: %s; resuming at byte %d in %.1fs",
                            what,
                            exc,
                            have,
                            delay,
                        )
                        time.sleep(delay)
            if have != f.size:
                raise ModelIntegrityError(
                    f"{what} is {have} bytes, its manifest says {f.size}: refused"
                )
            if digest.hexdigest() != f.sha256:
                raise ModelIntegrityError(
                    f"{what} does not match its manifest (sha256 {digest.hexdigest()}, "
                    f"expected {f.sha256}): refused"
                )
            tmp.chmod(0o444)
            os.replace(tmp, self._blob(f.sha256))
            self.downloads += 1
        finally:
            tmp.unlink(missing_ok=True)

    def _materialise(self, manifest: Manifest) -> None:
        """The model's folder of links, built aside and renamed into place when complete."""
        with FileLock(self._lock(f"model-{manifest.digest}")):
            folder = self._folder(manifest)
            if folder.is_dir():
                return
            staging = folder.with_name(f"{PARTIAL}{manifest.digest}-{uuid.uuid4().hex}")
            try:
                for f in manifest.files:
                    if manifest.single_file:
                        target = staging / manifest.entry
                    else:
                        target = staging / manifest.entry / f.path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    blob = self._blob(f.sha256)
                    try:
                        os.link(blob, target)
                    except OSError:  # a file system without hard links
                        target.symlink_to(blob)
                os.rename(staging, folder)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)

    # -- eviction ------------------------------------------------------------------------------

    def _blobs(self) -> dict[str, tuple[int, float]]:
        """sha256 -> (size, mtime) of the verified blobs."""
        found = {}
        for p in (self.root / "blobs").iterdir():
            if INCOMPLETE not in p.name:
                with contextlib.suppress(FileNotFoundError):
                    stat = p.stat()
                    found[p.name] = (stat.st_size, stat.st_mtime)
        return found

    def _records(self) -> dict[str, tuple[Manifest, float]]:
        """digest -> (manifest, last use) of every model this host has taken into use."""
        found = {}
        for p in (self.root / "models").glob("*.json"):
            try:
                manifest = Manifest.from_json(p.read_bytes(), str(p))
                found[p.stem] = (manifest, p.stat().st_mtime)
            except (OSError, ManifestError):
                log.warning("removing the unreadable model record %s and its folder", p)
                self._drop_model(p.stem)  # its links would hold on to evicted blobs
        return found

    def _drop_model(self, digest: str) -> None:
        shutil.rmtree(self.root / "models" / digest, ignore_errors=True)
        self._record(digest).unlink(missing_ok=True)
        self._lock(f"inuse-{digest}").unlink(missing_ok=True)

    def _sweep_leftovers(self) -> None:
        """What a killed process left: downloads and folders nobody is writing any more."""
        for p in (self.root / "blobs").glob(f"*{INCOMPLETE}*"):
            lock = FileLock(self._lock(f"blob-{p.name[:64]}"), timeout=0)
            with contextlib.suppress(Timeout), lock:
                p.unlink(missing_ok=True)
        for p in (self.root / "models").glob(f"{PARTIAL}*"):
            digest = p.name[len(PARTIAL) :].split("-", 1)[0]
            lock = FileLock(self._lock(f"model-{digest}"), timeout=0)
            with contextlib.suppress(Timeout), lock:
                shutil.rmtree(p, ignore_errors=True)

    def evict(self, incoming: int = 0) -> list[str]:
        """Remove least recently used blobs no model in use links to, until the cache and
        `incoming` bytes fit the budget; returns the removed blobs' hashes."""
        removed: list[str] = []
        with FileLock(self._lock("cache")):
            self._sweep_leftovers()
            records = self._records()
            in_use = {d for d in records if self._in_use(d)}
            protected = {f.sha256 for d in in_use for f in records[d][0].files}
            blobs = self._blobs()
            # A blob's last use is its models' latest; one no model links to, its download.
            users: dict[str, list[str]] = {}
            last_use: dict[str, float] = {}
            for digest, (manifest, used) in records.items():
                for f in manifest.files:
                    users.setdefault(f.sha256, []).append(digest)
                    last_use[f.sha256] = max(last_use.get(f.sha256, 0.0), used)
            for sha, (_, mtime) in blobs.items():
                last_use.setdefault(sha, mtime)
            total = sum(size for size, _ in blobs.values()) + incoming
            for sha in sorted(set(blobs) - protected, key=lambda s: last_use[s]):
                if total <= self.budget_bytes:
                    break
                self._blob(sha).unlink(missing_ok=True)
                total -= blobs[sha][0]
                removed.append(sha)
                for digest in users.get(sha, ()):
                    if digest not in in_use:
                        self._drop_model(digest)
        if removed:
            self.evicted += len(removed)
            log.info("model cache: removed %d least recently used blob(s)", len(removed))
        return removed
