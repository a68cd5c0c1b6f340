"""A model in an object store: its manifest, and the keys of its content-addressed blobs.

Under the store's prefix:

    blobs/<sha256>                    one object per distinct file content
    manifests/<family>/<name>.json    {name, family, kind, files: [{path, size, sha256}],
                                       size_bytes, pushed_at}

A file's `path` is relative inside the model ("/"-separated); a single-file model (a
spandrel upscaler) has one file whose path is its file name, `<name>.safetensors`. The
manifest is written after every blob it names, so a listed model is always complete.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.modelstore import FAMILIES, FOLDERS, UPSCALER_SUFFIXES, valid_name

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SINGLE_FILE_KIND = "spandrel"
CHUNK = 1 << 20


class ManifestError(ValueError):
    """A manifest that cannot be trusted; the message names it and the field."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def blob_key(sha256: str) -> str:
    return f"blobs/{sha256}"


def manifest_key(family: str, name: str) -> str:
    return f"manifests/{family}/{name}.json"


def _safe_relative(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return (
        bool(parts)
        and not path.startswith("/")
        and "\\" not in path
        and PurePosixPath(*parts).as_posix() == path
        and not any(p in ("", ".", "..") or p.startswith(".") for p in parts)
    )


@dataclass(frozen=True)
class ModelFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    family: str
    kind: str
    files: tuple[ModelFile, ...]
    pushed_at: float = 0.0
    cross_attention: int | None = None  # read from the files on push (ModelInfo's)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def single_file(self) -> bool:
        return self.kind == SINGLE_FILE_KIND

    @property
    def entry(self) -> Path:
        """Where the model sits in a store folder: `checkpoints/<name>`, `upscalers/<name>.pth`."""
        leaf = self.files[0].path if self.single_file else self.name
        return Path(FOLDERS[self.family]) / leaf

    @property
    def digest(self) -> str:
        """The model's identity: its name, family, kind and files (not when it was pushed),
        so the same model pushed twice is the same model."""
        body = {k: v for k, v in self.as_dict().items() if k not in ("pushed_at", "size_bytes")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "size_bytes": self.size_bytes,
            "pushed_at": self.pushed_at,
            **({"cross_attention": self.cross_attention} if self.cross_attention else {}),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        """A checked manifest, or ManifestError naming `where` and the bad field (its file
        paths end up on a worker's disk: none may leave the model's folder)."""

        def bad(field: str, why: str) -> ManifestError:
            return ManifestError(f"manifest {where}: {field} {why}")

        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ManifestError(f"manifest {where} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise bad("(document)", "must be a JSON object")
        name, family, kind = doc.get("name"), doc.get("family"), doc.get("kind")
        if not isinstance(name, str) or not valid_name(name):
            raise bad("name", f"is not a model name: {name!r}")
        if family not in FAMILIES:
            raise bad("family", f"must be one of {', '.join(FAMILIES)}: {family!r}")
        if not isinstance(kind, str) or not kind:
            raise bad("kind", "must be a non-empty string")
        entries = doc.get("files")
        if not isinstance(entries, list) or not entries:
            raise bad("files", "must be a non-empty list")
        files = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise bad(f"files.{i}", "must be an object")
            path, size, sha = entry.get("path"), entry.get("size"), entry.get("sha256")
            if not isinstance(path, str) or not _safe_relative(path):
                raise bad(f"files.{i}.path", f"must be a relative path inside the model: {path!r}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad(f"files.{i}.size", f"must be a byte count: {size!r}")
            if not isinstance(sha, str) or not SHA256.match(sha):
                raise bad(f"files.{i}.sha256", f"must be 64 lowercase hex digits: {sha!r}")
            files.append(ModelFile(path, size, sha))
        if len({f.path for f in files}) != len(files):
            raise bad("files", "names a path twice")
        width = doc.get("cross_attention")
        if width is not None and (not isinstance(width, int) or isinstance(width, bool)):
            raise bad("cross_attention", f"must be an integer: {width!r}")
        pushed_at = float(doc.get("pushed_at") or 0.0)
        manifest = cls(name, family, kind, tuple(files), pushed_at, width)
        if manifest.single_file:
            suffixes = tuple(name + s for s in UPSCALER_SUFFIXES)
            if family != "upscaler" or len(files) != 1 or files[0].path not in suffixes:
                raise bad("files", f"of a {kind} model must be one file named {name}.<suffix>")
        return manifest
