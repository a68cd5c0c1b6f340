"""`renderfarm demo-models`: tiny random-weight models in the real formats.

Nothing is downloaded: every component is built from a config and saved with
`save_pretrained`, so workers load these folders with exactly the code that loads
a real checkpoint folder a user drops into the model store.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from worker.demo_upscalers import DEMO_UPSCALERS

log = logging.getLogger(__name__)

DEMO_SD15 = "demo-sd15"
DEMO_SDXL = "demo-sdxl"


def _byte_tokens() -> list[str]:
    """GPT-2/CLIP byte-to-unicode alphabet: every byte maps to one printable character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


def write_clip_tokenizer(folder: Path) -> int:
    """A generated CLIP BPE vocabulary (characters, no merges); returns its size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_tokens()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return len(tokens)


def _tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_clip_tokenizer(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp)


# The demo models' CLIP text encoder sizes (a real SD1.5 one is 768 wide, 12 layers).
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)


def _text_encoder_config(tokenizer, **sizes):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def _vae(scaling_factor: float = 0.18215, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # Four blocks, so latents are 1/8 of the image as in every real SD VAE.
    return AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def demo_scheduler():
    """The SDXL demo checkpoint's scheduler: SD's betas, Euler."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )


SD15_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)


def build_sd15(
    out: Path,
    seed: int = 0,
    unet: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
    vae: dict[str, Any] | None = None,
) -> None:
    """A Stable Diffusion 1.5-layout pipeline; by default a few MB that renders 64×64 fast.

    `unet`, `text` and `vae` override the component sizes (the benchmarks build larger
    ones with the real SD1.5 block structure).
    """
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**vae) if vae else _vae(seed=seed),
        text_encoder=CLIPTextModel(_text_encoder_config(tokenizer, **(text or TINY_TEXT))),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**(unet or SD15_UNET)),
        scheduler=PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            skip_prk_steps=True,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_sdxl(out: Path, seed: int = 1) -> None:
    """A Stable Diffusion XL-layout pipeline: two text encoders, text-time UNet conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size/crop ids + pooled text
        cross_attention_dim=64,  # both text encoders' hidden states, concatenated
        norm_num_groups=32,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(scaling_factor=0.13025, seed=seed),
        text_encoder=CLIPTextModel(_text_encoder_config(tokenizer, **TINY_TEXT)),
        text_encoder_2=CLIPTextModelWithProjection(
            _text_encoder_config(tokenizer, **TINY_TEXT, projection_dim=32)
        ),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=demo_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(out, safe_serialization=True)


def build_vae(scaling_factor: float, seed: int) -> Callable[[Path], None]:
    """A standalone VAE folder, as users drop in for a per-job VAE override."""

    def build(out: Path) -> None:
        _vae(scaling_factor, seed).save_pretrained(out, safe_serialization=True)

    return build


def build_controlnet(out: Path, seed: int = 2) -> None:
    """A ControlNet matching demo-sd15's UNet (built from its config, as `from_unet` does)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET)
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(8, 16, 16, 32)
    )
    # A fresh ControlNet's output convs are zero (it starts as a no-op); give them weights
    # so the demo ControlNet visibly steers the image.
    for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(block.weight, std=0.05)
    controlnet.save_pretrained(out, safe_serialization=True)


# (family folder, name) -> builder writing the model at the given path
BUILDERS: dict[tuple[str, str], Callable[[Path], None]] = {
    ("checkpoints", DEMO_SD15): build_sd15,
    ("checkpoints", DEMO_SDXL): build_sdxl,
    ("vae", "demo-vae-sd15"): build_vae(0.18215, seed=10),
    ("vae", "demo-vae-sdxl"): build_vae(0.13025, seed=11),
    ("controlnet", "demo-controlnet-sd15"): build_controlnet,
    **{("upscalers", name): build for name, build in DEMO_UPSCALERS.items()},
}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_demo_models(models_dir: Path, force: bool = False) -> list[str]:
    """Write every demo model that is absent (or all, with `force`); returns those written."""
    written = []
    for (folder, name), build in BUILDERS.items():
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        target = models_dir / folder / name
        if target.exists() and not force:
            continue
        # Build beside the target and rename, so a half-written model is never listed.
        staging = models_dir / folder / f".{name}.partial"
        _remove(staging)
        build(staging)
        _remove(target)
        staging.rename(target)
        log.info("wrote demo model %s", target)
        written.append(name)
    return written
