"""The Wan2.1 VAE through diffusers' `AutoencoderKLWan`, behind the `VideoVAE` protocol.

diffusers does the real work. This module loads both published layouts strictly:

- the diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`, or a model folder with a
  `vae/` subfolder), and
- the original single file of the Wan repo (`Wan2.1_VAE.pth`, or a `.safetensors` with the same names),
  whose parameter names are mapped to diffusers names by `original_key_map`.

`encode` returns normalised latents ((mean - latents_mean) / latents_std with the published statistics
from the diffusers config), which is what the original Wan code's `encode` returns too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from astra.config_fields import read_json_object
from astra.errors import CheckpointError
from astra.model.checkpoints import read_state_dict
from astra.vae.common import TEMPORAL_STRIDE, check_latents, check_state_dict, check_video

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
ORIGINAL_WEIGHTS = "Wan2.1_VAE.pth"

# Original Wan module names of the parts of a residual block / mid block (wan/modules/vae.py).
_RESNET_PARTS = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_MID_BLOCK_PARTS = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}
_TOP_LEVEL = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
_SIDE_LEVEL = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}


def _original_name(name: str, num_res_blocks: int) -> str:
    """Original Wan name of one diffusers `AutoencoderKLWan` parameter name."""
    first, rest = name.split(".", 1)
    if first in _TOP_LEVEL:
        return f"{_TOP_LEVEL[first]}.{rest}"
    parts = rest.split(".")
    if parts[0] in _SIDE_LEVEL:
        return ".".join([first, _SIDE_LEVEL[parts[0]], *parts[1:]])
    if parts[0] == "mid_block":
        block, tail = f"{first}.middle.{_MID_BLOCK_PARTS[f'{parts[1]}.{parts[2]}']}", parts[3:]
    elif parts[0] == "down_blocks":  # a flat list in both layouts
        block, tail = f"{first}.downsamples.{parts[1]}", parts[2:]
    elif parts[0] == "up_blocks":  # original: per stage (num_res_blocks + 1) resnets, then the upsampler
        stage, stage_length = int(parts[1]), num_res_blocks + 2
        offset = int(parts[3]) if parts[2] == "resnets" else num_res_blocks + 1
        block, tail = f"{first}.upsamples.{stage * stage_length + offset}", parts[4:]
    else:
        raise CheckpointError(f"no original Wan name known for diffusers parameter {name!r}")
    if tail and tail[0] in _RESNET_PARTS:
        tail = [_RESNET_PARTS[tail[0]], *tail[1:]]
    return ".".join([block, *tail])


def original_key_map(model: nn.Module) -> dict[str, str]:
    """{original Wan name: diffusers name} for every parameter of an `AutoencoderKLWan`."""
    config = model.config
    if config.attn_scales or config.is_residual or config.patch_size is not None:
        raise CheckpointError(
            "the original Wan2.1 single-file layout exists only for attn_scales=[], is_residual=False and "
            "patch_size=None (Wan2.1); use the diffusers folder layout for this config"
        )
    return {_original_name(name, config.num_res_blocks): name for name in model.state_dict()}


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    check_state_dict(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


def build_autoencoder(config: dict[str, Any] | None) -> nn.Module:
    from diffusers import AutoencoderKLWan

    if config is None:
        return AutoencoderKLWan()  # the defaults are Wan2.1's published config
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return AutoencoderKLWan.from_config(config)


def load_wan_vae(path: str | Path, config: dict[str, Any] | None = None) -> "WanVAE":
    """Load the Wan2.1 VAE from a diffusers folder or an original single file (detected).

    `config` (diffusers `AutoencoderKLWan` config) is only needed for a single file of a non-default
    model; a `config.json` beside a single file is used when present.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Wan VAE checkpoint at {path}")
    if path.is_dir():
        for folder in (path, path / "vae"):
            if (folder / "config.json").is_file() and (folder / DIFFUSERS_WEIGHTS).is_file():
                model = build_autoencoder(config or read_json_object(folder / "config.json", error=CheckpointError))
                _load_strict(model, read_state_dict(folder / DIFFUSERS_WEIGHTS), folder / DIFFUSERS_WEIGHTS)
                return WanVAE(model.eval())
        if (path / ORIGINAL_WEIGHTS).is_file():
            return load_wan_vae(path / ORIGINAL_WEIGHTS, config)
        raise CheckpointError(
            f"{path} holds neither a diffusers VAE (config.json + {DIFFUSERS_WEIGHTS}, maybe under vae/) "
            f"nor {ORIGINAL_WEIGHTS}"
        )
    if config is None and (path.parent / "config.json").is_file():
        config = read_json_object(path.parent / "config.json", error=CheckpointError)
    model = build_autoencoder(config)
    state = read_state_dict(path)
    if "encoder.conv1.weight" in state:  # original naming; diffusers uses encoder.conv_in
        renames = original_key_map(model)
        state = {renames.get(name, name): tensor for name, tensor in state.items()}
    _load_strict(model, state, path)
    return WanVAE(model.eval())


class WanVAE(nn.Module):
    """`VideoVAE` protocol around a diffusers `AutoencoderKLWan` (normalised latents, clamped frames)."""

    temporal_stride = TEMPORAL_STRIDE

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        config = model.config
        self.register_buffer("latents_mean", torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", torch.tensor(config.latents_std).view(1, -1, 1, 1, 1), persistent=False)

    @property
    def latent_channels(self) -> int:
        return self.model.config.z_dim

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.model.config.dim_mult) - 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        check_video(video, self.model.config.in_channels, self.spatial_stride)
        mean = self.model.encode(video).latent_dist.mean
        return (mean - self.latents_mean.to(mean)) / self.latents_std.to(mean)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.latents_std.to(latents) + self.latents_mean.to(latents)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """`start` (the real start frame) is for decoders with a reference path; the Wan VAE has none."""
        check_latents(latents, self.latent_channels)
        return self.model.decode(self.denormalize(latents)).sample

    def stream_decoder(self, start: torch.Tensor | None = None) -> "WanStreamDecoder":
        return WanStreamDecoder(self)


class WanStreamDecoder:
    """Streams diffusers' own frame-by-frame decode loop (`AutoencoderKLWan._decode`): we hold the causal
    feature cache between calls instead of clearing it, so chunks concatenate to the one-shot decode."""

    def __init__(self, vae: WanVAE):
        self.vae = vae
        self.reset()

    def reset(self) -> None:
        num_convs = self.vae.model._cached_conv_counts["decoder"]
        self.feature_cache: list = [None] * num_convs
        self.frames_seen = 0

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        check_latents(latents, self.vae.latent_channels)
        model = self.vae.model
        x = model.post_quant_conv(self.vae.denormalize(latents))
        frames = []
        for index in range(x.shape[2]):
            frames.append(
                model.decoder(
                    x[:, :, index : index + 1],
                    feat_cache=self.feature_cache,
                    feat_idx=[0],
                    first_chunk=self.frames_seen == 0,
                )
            )
            self.frames_seen += 1
        return torch.cat(frames, dim=2).clamp(-1.0, 1.0)
