"""Drop-in modules: compiled components standing in for the torch modules inside a diffusers
pipeline (UNet, VAE, text encoders) and an upscaler's network."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from worker.openvino.variants import CompiledVariants, UnsupportedOnOpenVINO

# -- drop-in modules ---------------------------------------------------------------------------


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()


class OpenVINOModule(torch.nn.Module):
    """A compiled component standing in for a torch module inside a diffusers pipeline.

    Attributes it does not have are read from the torch module's skeleton on the meta device
    (so `config` and the like answer as before). It has no parameters: tensors come in and go
    out on the CPU as float32, whatever device OpenVINO runs on. `parts` are its compiled IRs.
    """

    def __init__(self, original: torch.nn.Module, parts: dict[str, CompiledVariants]) -> None:
        super().__init__()
        # Not a registered submodule: `parameters()`, `.to()` and memory walks skip it.
        object.__setattr__(self, "_original", original)
        object.__setattr__(self, "parts", parts)
        self.eval()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("_original")
            if original is None or name.startswith("__"):
                raise
            return getattr(original, name)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def to(self, *args: Any, **kwargs: Any) -> OpenVINOModule:
        return self  # compiled for its OpenVINO device; `pipe.to(...)` leaves it there

    def compiled_variants(self) -> int:
        return sum(p.count for p in self.parts.values())

    def compiled_bytes(self) -> int:
        return sum(p.nbytes for p in self.parts.values())

    def ir_bytes(self) -> int:
        return sum(p.weight_bytes for p in self.parts.values())


class OpenVINOUNet(OpenVINOModule):
    """`UNet2DConditionModel.forward` as diffusers calls it (SD 1.5, SDXL, with ControlNet)."""

    def __init__(
        self, original: torch.nn.Module, parts: dict[str, CompiledVariants], meta: dict[str, Any]
    ) -> None:
        super().__init__(original, parts)
        object.__setattr__(self, "added_cond_keys", list(meta["added_cond_keys"]))
        object.__setattr__(self, "down_residuals", int(meta["down_residuals"]))
        object.__setattr__(self, "_residual_shapes", {})

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: Sequence[torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        unsupported = {
            "class_labels": class_labels,
            "timestep_cond": timestep_cond,
            "attention_mask": attention_mask,
            "cross_attention_kwargs": cross_attention_kwargs or None,  # LoRA scale, IP-Adapter
            "down_intrablock_additional_residuals": down_intrablock_additional_residuals,
            "encoder_attention_mask": encoder_attention_mask,
        }
        if names := [k for k, v in unsupported.items() if v is not None]:
            raise UnsupportedOnOpenVINO(f"the OpenVINO UNet does not take {', '.join(names)}")
        if (down_block_additional_residuals is None) != (mid_block_additional_residual is None):
            raise UnsupportedOnOpenVINO("ControlNet residuals come as down and mid together")

        batch = sample.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).expand(batch)
        inputs = [sample, t, encoder_hidden_states]
        for key in self.added_cond_keys:
            if not added_cond_kwargs or key not in added_cond_kwargs:
                raise UnsupportedOnOpenVINO(f"this UNet needs added_cond_kwargs[{key!r}]")
            inputs.append(added_cond_kwargs[key])
        arrays = [_numpy(x) for x in inputs]
        if down_block_additional_residuals is None:
            # No ControlNet: zeros, which leave the UNet's result exactly as it was. numpy's
            # (calloc, one thread): torch.zeros fills with its OpenMP threads, which then
            # wait on cores OpenVINO's threads are still busy with (measured: 115 ms a job).
            shapes = self.residual_shapes(sample, encoder_hidden_states, added_cond_kwargs)
            arrays += [np.zeros(tuple(s), np.float32) for s in shapes]
        else:
            residuals = [*down_block_additional_residuals, mid_block_additional_residual]
            if len(residuals) != self.down_residuals + 1:
                raise UnsupportedOnOpenVINO(
                    f"this UNet takes {self.down_residuals} down residuals, "
                    f"got {len(residuals) - 1}"
                )
            arrays += [_numpy(x) for x in residuals]
        (out,) = self.parts["unet"](arrays, [tuple(sample.shape)])
        result = torch.from_numpy(out).to(sample.dtype)
        return UNet2DConditionOutput(sample=result) if return_dict else (result,)

    def residual_shapes(
        self,
        sample: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
    ) -> list[torch.Size]:
        """ControlNet residual shapes for these inputs: a forward of the meta skeleton."""
        key = (tuple(sample.shape), tuple(encoder_hidden_states.shape))
        if key not in self._residual_shapes:

            def meta(x: torch.Tensor) -> torch.Tensor:
                return torch.empty(x.shape, dtype=x.dtype, device="meta")

            added = {k: meta(v) for k, v in (added_cond_kwargs or {}).items()} or None
            t = torch.zeros(sample.shape[0], device="meta")
            hidden = meta(encoder_hidden_states)
            with _residual_hooks(self._original) as shapes, torch.no_grad():
                self._original(meta(sample), t, hidden, added_cond_kwargs=added)
            if len(shapes) != self.down_residuals + 1:
                raise UnsupportedOnOpenVINO(f"unexpected UNet residual layout: {len(shapes)}")
            self._residual_shapes[key] = shapes
        return self._residual_shapes[key]


@contextmanager
def _residual_hooks(unet: torch.nn.Module) -> Iterator[list[torch.Size]]:
    """Collect the shapes ControlNet residuals are added to, in the order the UNet takes them:
    conv_in's output, each down block's residual outputs, then the mid block's output."""
    shapes: list[torch.Size] = []
    handles = [unet.conv_in.register_forward_hook(lambda m, i, o: shapes.append(o.shape))]
    for block in unet.down_blocks:
        handles.append(
            block.register_forward_hook(lambda m, i, o: shapes.extend(r.shape for r in o[1]))
        )
    handles.append(unet.mid_block.register_forward_hook(lambda m, i, o: shapes.append(o.shape)))
    try:
        yield shapes
    finally:
        for handle in handles:
            handle.remove()


class OpenVINOAutoencoderKL(OpenVINOModule):
    """`AutoencoderKL.encode` / `decode` as the pipelines call them."""

    def _factor(self) -> int:
        return 2 ** (len(self._original.config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from diffusers.models.modeling_outputs import AutoencoderKLOutput

        n, _, h, w = x.shape
        f, channels = self._factor(), 2 * self._original.config.latent_channels
        (moments,) = self.parts["vae_encoder"]([_numpy(x)], [(n, channels, h // f, w // f)])
        # Sampling from the latent distribution stays in torch, with the job's generator.
        dist = DiagonalGaussianDistribution(torch.from_numpy(moments).to(x.dtype))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> Any:
        from diffusers.models.autoencoders.vae import DecoderOutput

        n, _, h, w = z.shape
        f, channels = self._factor(), self._original.config.out_channels
        (image,) = self.parts["vae_decoder"]([_numpy(z)], [(n, channels, h * f, w * f)])
        sample = torch.from_numpy(image).to(z.dtype)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedOnOpenVINO("the OpenVINO VAE runs encode() and decode() only")


class OpenVINOTextEncoder(OpenVINOModule):
    """A transformers text encoder (CLIPTextModel, CLIPTextModelWithProjection, ...)."""

    def __init__(
        self, original: torch.nn.Module, parts: dict[str, CompiledVariants], meta: dict[str, Any]
    ) -> None:
        super().__init__(original, parts)
        module, _, name = meta["output_class"].rpartition(".")
        object.__setattr__(self, "output_class", getattr(importlib.import_module(module), name))
        # [(field, number of tensors)]: the IR's outputs, flattened in this order.
        object.__setattr__(self, "fields", [(f, int(n)) for f, n in meta["fields"]])

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Any:
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise UnsupportedOnOpenVINO("the OpenVINO text encoder takes no attention mask")
        if position_ids is not None or output_attentions:
            raise UnsupportedOnOpenVINO("the OpenVINO text encoder takes input_ids only")
        n, length = input_ids.shape
        config = self._original.config
        expected = {
            "last_hidden_state": (n, length, config.hidden_size),
            "hidden_states": (n, length, config.hidden_size),
            "pooler_output": (n, config.hidden_size),
            "text_embeds": (n, getattr(config, "projection_dim", None)),
        }
        wanted = [expected.get(f) for f, count in self.fields for _ in range(count)]
        flat = self.parts["text_encoder"]([_numpy(input_ids)], wanted)
        values: dict[str, Any] = {}
        i = 0
        for name, count in self.fields:
            tensors = [torch.from_numpy(x) for x in flat[i : i + count]]
            i += count
            if name == "hidden_states":
                if output_hidden_states:
                    values[name] = tuple(tensors)
            else:
                values[name] = tensors[0]
        out = self.output_class(**values)
        return out if return_dict is not False else out.to_tuple()


class OpenVINOImageModel(OpenVINOModule):
    """An image-to-image model (an upscaler's network): (N, C, h, w) -> (N, C', h*s, w*s)."""

    def __init__(
        self, original: torch.nn.Module, parts: dict[str, CompiledVariants], scale: int, out: int
    ) -> None:
        super().__init__(original, parts)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "out_channels", out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        expected = (n, self.out_channels, h * self.scale, w * self.scale)
        (out,) = self.parts["model"]([_numpy(x)], [expected])
        return torch.from_numpy(out).to(x.dtype)
