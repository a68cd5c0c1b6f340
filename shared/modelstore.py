"""The model store: a folder of models, listed the same way by API, scheduler and workers.

A model is a sub-folder of `RENDERFARM_MODELS_DIR`. A diffusers pipeline folder (with
`model_index.json`) is a checkpoint; the folder name is the model's name in job specs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from shared.config import get_settings


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str  # "checkpoint" for a diffusers pipeline folder
    path: Path
    pipeline_class: str
    size_bytes: int

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "pipeline_class": self.pipeline_class,
            "size_bytes": self.size_bytes,
        }


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _read_checkpoint(path: Path) -> ModelInfo | None:
    index = path / "model_index.json"
    if not index.is_file():
        return None
    try:
        pipeline_class = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError):
        return None
    return ModelInfo(path.name, "checkpoint", path, pipeline_class, _folder_bytes(path))


def list_models(models_dir: Path | None = None) -> list[ModelInfo]:
    root = models_dir or get_settings().models_dir
    if not root.is_dir():
        return []
    found = (
        _read_checkpoint(p)
        for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".")  # skip half-written models
    )
    return [m for m in found if m is not None]


def find_model(name: str, models_dir: Path | None = None) -> ModelInfo | None:
    return next((m for m in list_models(models_dir) if m.name == name), None)
