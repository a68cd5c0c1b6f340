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
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEMO_SD15 = "demo-sd15"


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


def build_sd15(out: Path, seed: int = 0) -> None:
    """A Stable Diffusion 1.5-layout pipeline, a few MB, that renders 64×64 fast."""
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_clip_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
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
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)


# (family folder, name) -> builder writing the model at the given path
BUILDERS = {("checkpoints", DEMO_SD15): build_sd15}


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
