"""The model store: one folder, listed the same way by API, scheduler and workers.

Layout (one sub-folder per family, like SD-WebUI's `models/`):

    checkpoints/<name>/model_index.json      a diffusers pipeline folder (SD1.5, SDXL, ...)
    vae/<name>/config.json                   a diffusers AutoencoderKL folder
    controlnet/<name>/config.json            a diffusers ControlNetModel folder
    upscalers/<name>.safetensors|.pth|.pt    any architecture spandrel detects
    upscalers/<name>/config.json             an AuraSR folder (config.json + model.safetensors)

A model's name is its folder or file name without suffix; names are unique per family.
Names starting with "." are skipped (half-written models).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("checkpoint", "vae", "controlnet", "upscaler")
FOLDERS = {
    "checkpoint": "checkpoints",
    "vae": "vae",
    "controlnet": "controlnet",
    "upscaler": "upscalers",
}
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    path: Path
    # What the files say they are: the pipeline or model class, or "spandrel"/"aura-sr".
    kind: str
    size_bytes: int

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "size_bytes": self.size_bytes,
        }


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _class_name(config: Path) -> str | None:
    try:
        return json.loads(config.read_text()).get("_class_name") or "unknown"
    except (OSError, ValueError, AttributeError):
        return None


def _read(family: str, path: Path) -> ModelInfo | None:
    kind = _read_kind(family, path)
    if kind is None:
        return None
    name = path.stem if path.is_file() else path.name
    return ModelInfo(name, family, path, kind, _bytes(path))


def _read_kind(family: str, path: Path) -> str | None:
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


def _entries(models_dir: Path, family: str) -> list[Path]:
    folder = models_dir / FOLDERS[family]
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]


def list_models(models_dir: Path, family: str | None = None) -> list[ModelInfo]:
    return [
        info
        for fam in ((family,) if family else FAMILIES)
        for path in _entries(models_dir, fam)
        if (info := _read(fam, path))
    ]


def model_names(models_dir: Path, family: str) -> list[str]:
    """The names `list_models` lists, without sizing every model (for every heartbeat)."""
    return [
        path.stem if path.is_file() else path.name
        for path in _entries(models_dir, family)
        if _read_kind(family, path) is not None
    ]


def find_model(name: str, family: str, models_dir: Path) -> ModelInfo | None:
    """The model `list_models` would list under this name, reading only its own paths (every
    submission and job looks models up: no listing of the whole store)."""
    if not name or name.startswith(".") or Path(name).name != name:
        return None
    folder = models_dir / FOLDERS[family]
    names = [name] + [name + suffix for suffix in UPSCALER_SUFFIXES if family == "upscaler"]
    for candidate in sorted(names):  # the order list_models meets them in
        path = folder / candidate
        if path.exists() and (info := _read(family, path)) and info.name == name:
            return info
    return None
