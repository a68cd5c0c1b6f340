"""The farm's models, samplers and upscalers as SD-WebUI lists and names them.

A checkpoint's title is "name [hash]": SD-WebUI hashes a checkpoint file; ours are
diffusers folders, so the hash is the sha256 of their files' relative paths and sizes —
an identity that changes when the model does, cheap to compute on every listing (a model in
an object store: its manifest's hash, which names every file's SHA-256).

Models are looked up in the process's one model store (`farm.models()`); `settings` give
the rest (the default checkpoint).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from dashboard import farm
from shared.config import Settings
from shared.modelstore import ModelInfo
from shared.samplers import DEFAULT_SCHEDULER, SAMPLERS

# SD-WebUI's scheduler names → the suffix of our combined sampler names (its label: the
# name capitalised).
SCHEDULERS = {"automatic": "", "uniform": "", "karras": " Karras", "exponential": " Exponential"}
# Our hires fix interpolates latents bilinearly: SD-WebUI's "Latent".
LATENT_MODES = ("Latent",)
# Plain resizers SD-WebUI lists beside the upscaler models ("None": no upscaling).
RESIZERS = ("None", "Lanczos", "Nearest")
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]$")
_FILE_SUFFIX = re.compile(r"\.(safetensors|ckpt|pt|pth|bin)$", re.IGNORECASE)


@lru_cache(maxsize=256)
def _folder_hash(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        digest.update(f"{f.relative_to(path.parent)}:{f.stat().st_size}\n".encode())
    return digest.hexdigest()


def model_hash(info: ModelInfo) -> str:
    if info.manifest is not None:
        return info.manifest.digest
    assert info.path is not None
    return _folder_hash(info.path, info.size_bytes)


def title(info: ModelInfo) -> str:
    return f"{info.name} [{model_hash(info)[:10]}]"


def sd_models(settings: Settings) -> list[dict[str, Any]]:
    return [
        {
            "title": title(m),
            "model_name": m.name,
            "hash": model_hash(m)[:10],
            "sha256": model_hash(m),
            "filename": m.source,
            "config": None,
        }
        for m in farm.models().list("checkpoint")
    ]


def plain_name(value: str) -> str:
    """ "name [hash]", "name.safetensors" or "name" → "name"."""
    return _FILE_SUFFIX.sub("", _TITLE_HASH.sub("", value.strip()))


def find_checkpoint(value: str, settings: Settings) -> ModelInfo | None:
    return farm.models().find(plain_name(value), "checkpoint")


def default_checkpoint(settings: Settings) -> ModelInfo | None:
    if settings.sdapi_default_model:
        return find_checkpoint(settings.sdapi_default_model, settings)
    found = farm.models().list("checkpoint")
    return found[0] if found else None


def find_vae(value: str | None, settings: Settings) -> tuple[bool, str | None]:
    """(known, name): "Automatic"/"None"/"" → (True, None) = the checkpoint's own VAE."""
    if value is None or value.strip().lower() in ("", "automatic", "none"):
        return True, None
    info = farm.models().find(plain_name(value), "vae")
    return (info is not None), (info.name if info else None)


def sd_vae(settings: Settings) -> list[dict[str, Any]]:
    return [{"model_name": m.name, "filename": m.source} for m in farm.models().list("vae")]


def upscalers(settings: Settings) -> list[dict[str, Any]]:
    plain = [
        {"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for n in RESIZERS
    ]
    return plain + [
        {
            "name": m.name,
            "model_name": m.kind,
            "model_path": m.source,
            "model_url": None,
            "scale": None,
        }
        for m in farm.models().list("upscaler")
    ]


def find_upscaler(value: str, settings: Settings) -> str | None:
    """An upscaler model's name, the case of the name as the client wrote it aside."""
    name = plain_name(value)
    if info := farm.models().find(name, "upscaler"):
        return info.name
    matches = [n for n in farm.models().names("upscaler") if n.lower() == name.lower()]
    return matches[0] if len(matches) == 1 else None


def named(value: str, names: tuple[str, ...]) -> str | None:
    """One of `names` (a latent mode, a resizer), whatever the case the client wrote."""
    return next((n for n in names if n.lower() == value.strip().lower()), None)


def base_samplers() -> list[str]:
    """Sampler names without a scheduler (SD-WebUI >= 1.9 lists these; Karras and Exponential
    are schedulers)."""
    suffixes = tuple(suffix for suffix in SCHEDULERS.values() if suffix)
    return [name for name in SAMPLERS if not name.endswith(suffixes)]


def samplers() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "aliases": ALIASES.get(name, []),
            "options": {"scheduler": DEFAULT_SCHEDULER[name]} if name in DEFAULT_SCHEDULER else {},
        }
        for name in base_samplers()
    ]


def schedulers() -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "label": name.capitalize(),
            "aliases": None,
            "default_rho": 7.0 if name == "karras" else -1,
            "need_inner_model": False,
        }
        for name in SCHEDULERS
    ]


# SD-WebUI's sampler aliases (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py;
# the "_ka" ones are its legacy Karras samplers), for the samplers the farm has.
ALIASES = {
    "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Euler": ["k_euler"],
    "LMS": ["k_lms"],
    "LMS Karras": ["k_lms_ka"],
    "Heun": ["k_heun"],
    "DPM2": ["k_dpm_2"],
    "DPM2 Karras": ["k_dpm_2_ka"],
    "DPM2 a": ["k_dpm_2_a"],
    "DPM2 a Karras": ["k_dpm_2_a_ka"],
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ 2M Karras": ["k_dpmpp_2m_ka"],
    "DPM++ 2M SDE": ["k_dpmpp_2m_sde"],
    "DPM++ 2M SDE Karras": ["k_dpmpp_2m_sde_ka"],
    "DPM++ 2M SDE Exponential": ["k_dpmpp_2m_sde_exp"],
    "DPM++ SDE": ["k_dpmpp_sde"],
    "DPM++ SDE Karras": ["k_dpmpp_sde_ka"],
    "DDIM": ["ddim"],
    "PLMS": ["plms"],
    "UniPC": ["unipc"],
}
_BY_LOWER = {
    **{alias: name for name, aliases in ALIASES.items() for alias in aliases},
    **{name.lower(): name for name in SAMPLERS},
}


def sampler_for(name: str, scheduler: str) -> tuple[str | None, str | None]:
    """(our sampler name, None) or (None, the field at fault): "DPM++ 2M" + "karras" and the
    legacy "DPM++ 2M Karras" both → "DPM++ 2M Karras"; SD-WebUI's aliases ("k_euler_a") too;
    "automatic", the sampler's default scheduler ("DPM++ 2M" → "DPM++ 2M Karras", as in
    SD-WebUI >= 1.9)."""
    found = _BY_LOWER.get(name.strip().lower())
    if found is None:
        return None, "sampler_name"
    chosen = scheduler.strip().lower()
    if chosen == "automatic":
        chosen = DEFAULT_SCHEDULER.get(found, chosen)
    suffix = SCHEDULERS.get(chosen)
    if suffix is None:
        return None, "scheduler"
    if suffix and not found.endswith(suffix):
        if found + suffix not in SAMPLERS:
            return None, "scheduler"
        found += suffix
    return found, None
