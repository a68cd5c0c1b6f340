"""Where results live: a local folder (`file://`) or an S3-compatible bucket (`s3://`).

Both backends take the same keys (`jobs/<id>/...`), so a job's outputs can be read
back without knowing which one the farm was started with.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shared.config import Settings


class ObjectNotFound(KeyError):
    """The key has no object in storage."""


class Storage(ABC):
    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def age_s(self, key: str) -> float | None:
        """Seconds since the object `key` was last written; None if there is none."""

    @abstractmethod
    def delete(self, key: str) -> int:
        """Delete the object `key`, or with a key ending in `/` every object under it; how
        many there were (deleting what is not there is no error)."""


class FileStorage(Storage):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key escapes the storage root: {key!r}")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def age_s(self, key: str) -> float | None:
        try:
            return time.time() - self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> int:
        path = self._path(key)
        if not key.endswith("/"):
            existed = path.is_file()
            path.unlink(missing_ok=True)
            return int(existed)
        if not path.is_dir() or path == self.root:
            return 0
        found = sum(1 for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path, ignore_errors=True)
        return found


def s3_client(settings: Settings, **config: Any) -> Any:
    """A boto3 S3 client for the farm's endpoint and credentials; `config`: botocore
    `Config` options (timeouts, retries, connection pool)."""
    import boto3  # imported here so file:// users never pay for it
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(**config) if config else None,
    )


def parse_s3_url(url: str, variable: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`, or a ValueError naming `variable`."""
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise ValueError(f"{variable} must start with s3://, got {url!r}")
    if not parsed.netloc:
        raise ValueError(f"no bucket in {variable}={url!r}")
    return parsed.netloc, parsed.path.strip("/")


class S3Storage(Storage):
    def __init__(self, bucket: str, prefix: str, settings: Settings) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = s3_client(settings)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
        )

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def age_s(self, key: str) -> float | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return time.time() - head["LastModified"].timestamp()

    def delete(self, key: str) -> int:
        if not key.endswith("/"):
            existed = self.exists(key)
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
            return int(existed)
        found = 0
        pages = self.client.get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self._key(key)):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:  # a page holds at most 1,000 keys: what one DeleteObjects takes
                done = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})
                if errors := done.get("Errors"):  # refused per key (AccessDenied): not deleted
                    first = errors[0]
                    raise OSError(
                        f"S3 refused to delete {len(errors)} of the objects under {key!r}: "
                        f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                    )
                found += len(objects)
        return found


def job_folder(job_id: str) -> str:
    """Where a job's outputs and manifests are, every attempt's (worker/outputs.py)."""
    return f"jobs/{job_id}/"


def thumbs_folder(job_id: str) -> str:
    """Where the thumbnails of a job's outputs are kept (dashboard/thumbnails.py)."""
    return f"thumbs/{job_id}/"


def open_storage(settings: Settings) -> Storage:
    url = urlparse(settings.storage_url)
    if url.scheme == "file":
        return FileStorage(Path(url.path))
    if url.scheme == "s3":
        if not url.netloc:
            raise ValueError(f"no bucket in RENDERFARM_STORAGE_URL={settings.storage_url!r}")
        return S3Storage(url.netloc, url.path, settings)
    raise ValueError(
        f"RENDERFARM_STORAGE_URL must start with file:// or s3://, got {settings.storage_url!r}"
    )
