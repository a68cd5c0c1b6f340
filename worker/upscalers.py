"""Upscaler models: one loader and one interface for every family, and tiled upscaling.

Every family (ESRGAN, Real-ESRGAN compact, any other architecture spandrel detects, and
AuraSR) loads into the same `Upscaler`: the family's specifics are settled inside
`load_upscaler` and nowhere else. `Upscaler.model` is the `torch.nn.Module` that owns every
weight, so a cache measures and frees all families the same way (seed bug 000: one family
lacked the dict the unload path assumed).

`upscale` runs the model over fixed-size, overlapping tiles — every tile has the same input
shape, so a compiled backend keeps one shape — and always returns exactly the requested size
with finite values, or raises `UpscaleError` (seed bug 002: a shape error once came back as
"success" with a corrupt image).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.modelstore import ModelInfo

# At most this many model passes: a ×2 model reaches ×16 in four.
MAX_PASSES = 6


class UpscaleError(RuntimeError):
    """The upscaler produced no valid image: wrong size, or NaN/inf values."""


@dataclass(eq=False)
class Upscaler:
    family: str  # "ESRGAN", "RealESRGAN Compact", ... (spandrel's name) or "AuraSR"
    scale: int
    # The module that owns every weight: what a cache measures and drops.
    model: torch.nn.Module
    # A batch of tiles (N, 3, h, w) in [0, 1] on `device`/`dtype` -> (N, 3, h*scale, w*scale).
    forward: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    dtype: torch.dtype
    # The only tile size the model accepts (AuraSR's input_image_size); None: any size.
    fixed_tile: int | None = None

    def run_tile(self, tile: torch.Tensor) -> torch.Tensor:
        """One tile (N, 3, h, w) float in [0, 1] -> (N, 3, h*scale, w*scale) float32 on the CPU."""
        with torch.inference_mode():
            out = self.forward(tile.to(self.device, self.dtype)).float().cpu()
        n, c, h, w = tile.shape
        expected = (n, c, h * self.scale, w * self.scale)
        if tuple(out.shape) != expected:
            raise UpscaleError(
                f"{self.family} returned shape {tuple(out.shape)} for a {w}x{h} tile; "
                f"expected {expected}"
            )
        return out


# -- loading -----------------------------------------------------------------------------------


def load_upscaler(
    path: Path | ModelInfo, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> Upscaler:
    """Load an upscaler from the model store: a file through spandrel, a folder as AuraSR."""
    path = Path(path.path if isinstance(path, ModelInfo) else path)
    if path.is_dir():
        return _load_aura_sr(path, torch.device(device))
    if path.is_file():
        return _load_spandrel(path, torch.device(device), dtype)
    raise FileNotFoundError(f"no upscaler at {path}")


def _load_spandrel(path: Path, device: torch.device, dtype: torch.dtype) -> Upscaler:
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedDtypeError

    descriptor = ModelLoader(device).load_from_file(path)
    name = descriptor.architecture.name
    if not (
        isinstance(descriptor, ImageModelDescriptor)
        and descriptor.input_channels == 3
        and descriptor.output_channels == 3
    ):
        raise UpscaleError(f"{path.name} is a {name} model, not an RGB image upscaler")
    try:
        descriptor.to(dtype)
    except UnsupportedDtypeError:
        dtype = torch.float32  # e.g. half precision asked of a model that cannot run in it
    descriptor.eval()
    # The descriptor pads inputs to the model's size requirements and clamps outputs to [0, 1].
    return Upscaler(name, descriptor.scale, descriptor.model, descriptor, device, dtype)


def _load_aura_sr(folder: Path, device: torch.device) -> Upscaler:
    """An AuraSR folder, loaded the way `aura_sr.AuraSR.from_pretrained` loads a local file.

    `from_pretrained` always builds the model on "cuda", so build it on our device instead.
    """
    from aura_sr import AuraSR
    from safetensors.torch import load_file

    config = json.loads((folder / "config.json").read_text())
    aura = AuraSR(config, device=str(device))
    aura.upsampler.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    net = aura.upsampler.eval()
    # One fixed style for every tile and image, so neighbouring tiles agree (aura-sr's own
    # tiler draws a new style per batch of tiles).
    style = torch.randn(1, net.style_network.dim_in, generator=torch.Generator().manual_seed(0))
    style = style.to(device)

    def forward(tiles: torch.Tensor) -> torch.Tensor:
        # AuraSR adds a little random noise to its input: seed it, so the same image gives
        # the same output, without touching the process's random state.
        with torch.random.fork_rng(devices=[tiles.device] if tiles.device.type == "cuda" else []):
            torch.manual_seed(0)
            out = net(lowres_image=tiles, noise=style.to(tiles.device).expand(len(tiles), -1))
        return out.clamp(0, 1)

    scale = config["image_size"] // config["input_image_size"]
    size = config["input_image_size"]
    return Upscaler("AuraSR", scale, net, forward, device, torch.float32, fixed_tile=size)


# -- upscaling ---------------------------------------------------------------------------------


def upscale(
    upscaler: Upscaler,
    image: np.ndarray,
    width: int,
    height: int,
    tile: int = 256,
    overlap: int = 16,
    progress: Callable[[float], None] | None = None,
) -> np.ndarray:
    """Upscale an (H, W, 3) float image in [0, 1] to exactly (height, width, 3).

    The model runs in passes until the image covers the target (a ×2 model asked for ×4 runs
    twice; always at least once), then a Lanczos resize gives the exact size. `progress`
    is told the fraction done after every tile (and may raise to stop the upscale).
    """
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    pixels = np.asarray(image, dtype=np.float32)
    passes = _passes(pixels.shape[1], pixels.shape[0], width, height, upscaler.scale)
    report = progress or (lambda _: None)
    for n in range(passes):
        pixels = _tiled_pass(
            upscaler, pixels, tile, overlap, lambda f, n=n: report((n + f) / passes)
        )
        _check_finite(pixels, upscaler)  # before resizing can smear or hide bad values
    out = _resize(pixels, width, height)
    if out.shape != (height, width, 3):
        raise UpscaleError(
            f"{upscaler.family} upscale gave shape {out.shape}, expected ({height}, {width}, 3)"
        )
    _check_finite(out, upscaler)
    return out


def _passes(w: int, h: int, width: int, height: int, scale: int) -> int:
    if scale <= 1:  # a 1x model (restoration) is run once
        return 1
    passes = 1
    while passes < MAX_PASSES and (w * scale**passes < width or h * scale**passes < height):
        passes += 1
    return passes


def _tiled_pass(
    upscaler: Upscaler,
    image: np.ndarray,
    tile: int,
    overlap: int,
    tile_done: Callable[[float], None],
) -> np.ndarray:
    """One model pass over tile×tile inputs; each keeps only its centre (`overlap` is cropped).

    Cropping, not blending: where the model's receptive field is within `overlap`, the result
    equals one pass over the whole image exactly.
    """
    tile = upscaler.fixed_tile or tile
    if tile < 4:
        raise ValueError(f"tile must be at least 4 px, got {tile}")
    overlap = max(0, min(overlap, tile // 4))  # keep at least half of each tile
    core = tile - 2 * overlap
    h, w, _ = image.shape
    rows, cols = math.ceil(h / core), math.ceil(w / core)
    # Mirror the image `overlap` px beyond every edge (border pixels get natural context), and
    # up to a core further at the bottom/right, so every tile has the same input shape.
    pad = ((overlap, overlap + rows * core - h), (overlap, overlap + cols * core - w), (0, 0))
    padded = np.pad(image, pad, mode="reflect")
    s = upscaler.scale
    out = np.empty((rows * core * s, cols * core * s, 3), dtype=np.float32)
    keep = slice(overlap * s, (overlap + core) * s)
    corners = list(itertools.product(range(0, rows * core, core), range(0, cols * core, core)))
    for done, (top, left) in enumerate(corners, 1):
        piece = padded[top : top + tile, left : left + tile]
        x = torch.from_numpy(np.ascontiguousarray(piece.transpose(2, 0, 1)))[None]
        y = upscaler.run_tile(x)[0].permute(1, 2, 0).numpy()
        out[top * s : (top + core) * s, left * s : (left + core) * s] = y[keep, keep]
        tile_done(done / len(corners))
    return out[: h * s, : w * s]


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize in float precision (one PIL "F" image per channel)."""
    if image.shape[:2] == (height, width):
        return image
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
                (width, height), Image.Resampling.LANCZOS
            )
        )
        for c in range(3)
    ]
    # Lanczos overshoots at sharp edges; keep the [0, 1] range.
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def _check_finite(image: np.ndarray, upscaler: Upscaler) -> None:
    if not np.isfinite(image).all():
        raise UpscaleError(f"{upscaler.family} upscale gave NaN or infinite values")
