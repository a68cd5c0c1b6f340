"""Tiny random-weight upscalers in the real on-disk formats, for tests and the local demo.

Each builder writes one model exactly at `out`, in the layout users drop into
`<models_dir>/upscalers/`, and the worker loads it with the same code as a real one:

- `demo-esrgan-x4.safetensors`: an old-style ESRGAN (RRDBNet, `model.N...` keys), ×4;
- `demo-realesrgan-x2.safetensors`: a Real-ESRGAN compact net (SRVGGNetCompact, the
  `realesr-general` architecture, `body.N...` keys), ×2 — a second spandrel family;
- `demo-aura-sr/`: an AuraSR folder (`config.json` + `model.safetensors`), ×4, in the
  format the `aura-sr` package reads.

The weights are random: the outputs are noise, but every shape, key and config field is real.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

DEMO_ESRGAN = "demo-esrgan-x4.safetensors"
DEMO_REALESRGAN = "demo-realesrgan-x2.safetensors"
DEMO_AURA_SR = "demo-aura-sr"

# A shrunken AuraSR (the real one has dim 64 and ~600M parameters): same structure and
# config keys, 16 px tiles in, 64 px out. The skip connections need
# `down_dim_mults == up_dim_mults[2:]`; scale is 2 ** (len(up) - len(down)) == 4.
AURA_SR_CONFIG = {
    "dim": 2,
    "image_size": 64,
    "input_image_size": 16,
    "style_network": {"dim_in": 8, "dim_out": 16, "depth": 2},
    "up_dim_mults": [1, 1, 2, 2, 4],
    "down_dim_mults": [2, 2, 4],
    "full_attn": [False, False, False, True, True],
    "flash_attn": True,
    "self_attn_dim_head": 4,
    "self_attn_heads": 2,
    "attn_depths": [1, 1, 1, 1, 1],
    "mid_attn_depth": 1,
    "num_conv_kernels": 2,
    "resize_mode": "bilinear",
    "unconditional": True,
    "skip_connect_scale": 0.4,
}


def _save(module: torch.nn.Module, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, out)


def build_esrgan_x4(out: Path, seed: int = 20) -> None:
    """RRDBNet ×4 with 8 filters and 1 RRDB block (~0.9 MB; the real one has 64 and 23)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    _save(ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4), out)


def build_realesrgan_x2(out: Path, seed: int = 21) -> None:
    """SRVGGNetCompact ×2 with 8 features and 2 convs (~10 KB; realesr-general has 64 and 32)."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    _save(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2), out)


def build_aura_sr(out: Path, seed: int = 22) -> None:
    """An AuraSR folder: the `aura-sr` package's config.json and model.safetensors."""
    from aura_sr import AuraSR

    torch.manual_seed(seed)
    model = AuraSR(AURA_SR_CONFIG, device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(AURA_SR_CONFIG, indent=2))
    _save(model.upsampler, out / "model.safetensors")


# On-disk name under `<models_dir>/upscalers/` -> builder writing the model at a given path.
DEMO_UPSCALERS: dict[str, Callable[[Path], None]] = {
    DEMO_ESRGAN: build_esrgan_x4,
    DEMO_REALESRGAN: build_realesrgan_x2,
    DEMO_AURA_SR: build_aura_sr,
}
