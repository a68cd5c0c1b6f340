"""The model store: listed the same way by API, scheduler and workers, from one object
chosen once per process by `open_model_store(settings)`:

- `LocalModelStore`: one folder (`RENDERFARM_MODELS_DIR`), every machine sees the same files;
- `S3ModelStore` (shared/s3models.py): manifests and content-addressed blobs under an
  object-store prefix (`RENDERFARM_MODELS_URL=s3://bucket/prefix`); workers fetch what a job
  needs into their host's cache (worker/modelfetch.py).

Both answer `list(family)`, `names(family)` and `find(name, family)` with the same names.

The folder layout (one sub-folder per family, like SD-WebUI's `models/`), which is also the
shape `renderfarm models push` accepts and a worker materialises a fetched model in:

    checkpoints/<name>/model_index.json      a diffusers pipeline folder (SD1.5, SDXL, ...)
    vae/<name>/config.json                   a diffusers AutoencoderKL folder
    controlnet/<name>/config.json            a diffusers ControlNetModel folder
    upscalers/<name>.safetensors|.pth|.pt    any architecture spandrel detects
    upscalers/<name>/config.json             an AuraSR folder (config.json + model.safetensors)

A model's name is its folder or file name without suffix; names are unique per family.
Names starting with "." are skipped (half-written models).
"""

from __future__ import annotations

import errno
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.modelmanifest import Manifest

FAMILIES = ("checkpoint", "vae", "controlnet", "upscaler")
FOLDERS = {
    "checkpoint": "checkpoints",
    "vae": "vae",
    "controlnet": "controlnet",
    "upscaler": "upscalers",
}
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt")
# What each family's folder must hold, for the error that says why a path is not a model.
SHAPES = {
    "checkpoint": "a diffusers pipeline folder (with model_index.json)",
    "vae": "a diffusers AutoencoderKL folder (with config.json)",
    "controlnet": "a diffusers ControlNetModel folder (with config.json)",
    "upscaler": "a .safetensors/.pth/.pt file or an AuraSR folder (with config.json)",
}


class NotAModel(ValueError):
    """A path that is not a model of the family asked for; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    # On this machine's disk. None for an object-store model a worker has not fetched yet.
    path: Path | None
    # What the files say they are: the pipeline or model class, or "spandrel"/"aura-sr".
    kind: str
    size_bytes: int
    # Where it is listed from, for people: the folder or file, or the manifest's s3:// URL.
    source: str = ""
    # Object-store models: what a worker fetches (files, sizes, SHA-256).
    manifest: Manifest | None = None
    # Checkpoints and ControlNets: the width of the text embeddings the UNet attends to; a
    # ControlNet fits only checkpoints of its own (None: not known, nothing checked).
    cross_attention: int | None = None

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "size_bytes": self.size_bytes,
        }


def valid_name(name: str) -> bool:
    """A name a job may ask for: one path part, not hidden."""
    return bool(name) and not name.startswith(".") and Path(name).name == name


def _exists(path: Path) -> bool:
    """Whether `path` exists; a name longer than the filesystem allows names nothing (the
    spec bounds names in characters, and 200 of them can be 800 bytes)."""
    try:
        return path.exists()
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            return False
        raise


def entry_name(path: Path) -> str:
    """A model's name from its folder or file."""
    return path.stem if path.is_file() else path.name


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _class_name(config: Path) -> str | None:
    try:
        return json.loads(config.read_text()).get("_class_name") or "unknown"
    except (OSError, ValueError, AttributeError):
        return None


def read_cross_attention(family: str, path: Path) -> int | None:
    """`cross_attention_dim` of a checkpoint's UNet or of a ControlNet, from its config."""
    configs = {"checkpoint": path / "unet" / "config.json", "controlnet": path / "config.json"}
    if family not in configs:
        return None
    try:
        value = json.loads(configs[family].read_text()).get("cross_attention_dim")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def cross_attention_label(width: int) -> str:
    """A cross-attention width as people name the model generation it belongs to."""
    names = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
    return f"{names[width]} ({width})" if width in names else f"cross-attention width {width}"


def read_kind(family: str, path: Path) -> str | None:
    """What the files say the model is, or None if `path` is not a model of `family`."""
    if family == "checkpoint" and path.is_dir():
        return _class_name(path / "model_index.json")
    if family in ("vae", "controlnet") and path.is_dir():
        return _class_name(path / "config.json")
    if family == "upscaler":
        if path.is_file() and path.suffix in UPSCALER_SUFFIXES:
            return "spandrel"
        if path.is_dir() and (path / "config.json").is_file():
            return "aura-sr"
    return None


def model_files(path: Path, family: str) -> tuple[str, list[tuple[str, Path]]]:
    """The kind and the files (relative path, file) of the model at `path`, or NotAModel
    saying why it is not a model of `family`. Hidden files and folders are left out."""
    if family not in FAMILIES:
        raise NotAModel(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if not path.exists():
        raise NotAModel(f"{path}: no such file or folder")
    kind = read_kind(family, path)
    if kind is None:
        raise NotAModel(f"{path} is not a {family} model: expected {SHAPES[family]}")
    if path.is_file():
        return kind, [(path.name, path)]
    files = [
        (f.relative_to(path).as_posix(), f)
        for f in sorted(path.rglob("*"))
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(path).parts)
    ]
    return kind, files


def _read(family: str, path: Path) -> ModelInfo | None:
    kind = read_kind(family, path)
    if kind is None:
        return None
    return ModelInfo(
        entry_name(path),
        family,
        path,
        kind,
        _bytes(path),
        source=str(path),
        cross_attention=read_cross_attention(family, path),
    )


class ModelStore(ABC):
    """Where the farm's models are listed from (see the module's doc)."""

    # For people: the folder or the s3:// URL.
    location: str

    @abstractmethod
    def list(self, family: str | None = None) -> list[ModelInfo]:
        """Every model (of `family`), by family then name."""

    @abstractmethod
    def names(self, family: str) -> list[str]:
        """The names `list` lists, without sizing every model (for every heartbeat)."""

    @abstractmethod
    def find(self, name: str, family: str) -> ModelInfo | None:
        """The model `list` would list under this name, cheaply (every submission and job
        looks models up)."""


class LocalModelStore(ModelStore):
    """One folder with a sub-folder per family."""

    # How long a model found is remembered: every submission and job looks its models up,
    # and reading a model (its config, the size of every file) is the costly part.
    FOUND_TTL_S = 5.0

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self.location = str(models_dir)
        self._found: dict[tuple[str, str], tuple[float, ModelInfo]] = {}

    def _entries(self, family: str) -> list[Path]:
        folder = self.models_dir / FOLDERS[family]
        if not folder.is_dir():
            return []
        return [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]

    def list(self, family: str | None = None) -> list[ModelInfo]:
        return [
            info
            for fam in ((family,) if family else FAMILIES)
            for path in self._entries(fam)
            if (info := _read(fam, path))
        ]

    def names(self, family: str) -> list[str]:
        return [
            entry_name(path)
            for path in self._entries(family)
            if read_kind(family, path) is not None
        ]

    def find(self, name: str, family: str) -> ModelInfo | None:
        """Reads only this name's own paths (no listing of the whole folder), and remembers a
        model found for FOUND_TTL_S; an unknown name is looked for every time, so a model
        copied in is found at once."""
        remembered = self._found.get((family, name))
        if remembered and time.monotonic() - remembered[0] < self.FOUND_TTL_S:
            return remembered[1]
        info = self._read_named(name, family)
        if info is not None:
            self._found[(family, name)] = (time.monotonic(), info)
        return info

    def _read_named(self, name: str, family: str) -> ModelInfo | None:
        if not valid_name(name):
            return None
        folder = self.models_dir / FOLDERS[family]
        names = [name] + [name + suffix for suffix in UPSCALER_SUFFIXES if family == "upscaler"]
        for candidate in sorted(names):  # the order `list` meets them in
            path = folder / candidate
            if _exists(path) and (info := _read(family, path)) and info.name == name:
                return info
        return None


def open_model_store(settings: Settings) -> ModelStore:
    """The process's model store: RENDERFARM_MODELS_URL's object store if set, else the
    folder RENDERFARM_MODELS_DIR."""
    if not settings.models_url:
        return LocalModelStore(settings.models_dir)
    from shared.s3models import S3ModelStore  # boto3 only for those who use it

    return S3ModelStore.from_settings(settings)
