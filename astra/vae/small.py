"""The small causal video VAE (`astra-small-vae`) that the shipped small model uses.

A lighter relative of the Wan VAE, built for fast CPU decoding:

- Spatial work is per frame (2-D convs, frames folded into the batch), so it costs the same whether a
  frame is decoded alone or inside a clip.
- Time is compressed by "space-to-depth in time": the first frame is repeated 3 times in front so the
  video has 4(k+1) frames, and each group of 4 consecutive frames is stacked along channels into one
  latent frame. Latent frame 0 therefore sees only video frame 0, and latent frame c >= 1 sees video
  frames 4c-3 .. 4c, as the shared vocabulary in docs/architecture.md requires.
- All mixing across latent frames happens in causal 3-D convs (zero-padded in front). Each keeps the
  last `kernel_t - 1` input frames in a `StreamState`, so decoding chunk by chunk equals a one-shot
  decode exactly.

The encoder predicts a diagonal Gaussian (mean, log-variance) trained with a small KL term (as in Wan);
`encode` returns the mean, normalised per channel with the statistics measured after training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from astra.config_fields import dataclass_from_dict, read_json_object
from astra.errors import AstraError, CheckpointError, ConfigError
from astra.files import replace_folder, staging_folder
from astra.model.checkpoints import read_state_dict
from astra.vae.common import TEMPORAL_STRIDE, check_latents, check_state_dict, check_video

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VAE_TYPE = "astra-small-vae"  # the "type" field of config.json


@dataclass(frozen=True)
class SmallVAEConfig:
    """Widths of the small VAE. `frame_channels` are per resolution level, finest first; each level
    after the first halves the resolution, so spatial_stride = 2 ** (len(frame_channels) - 1)."""

    in_channels: int = 3
    z_dim: int = 16
    frame_channels: tuple[int, ...] = (16, 48, 64)  # per-frame 2-D stages at 64, 32, 16 px
    latent_channels_hidden: int = 80  # width of the causal 3-D stage on latent frames
    frame_res_blocks: int = 1  # residual blocks per 2-D level
    latent_res_blocks: int = 2  # causal residual blocks on latent frames
    temporal_kernel: int = 3  # latent frames seen by each causal conv (current + kernel - 1 previous)
    # Reference-frame decoding: every decoded chunk also sees the frame shown just before it (the real start image
    # for the first, then the decoder's own last output), so detail the latents cannot hold is carried over from
    # it instead of being lost at every chunk (see SmallDecoder).
    reference_frame: bool = False
    resolution: tuple[int, int] = (64, 64)  # what it is trained on (informational; any multiple works)
    # Per-channel statistics of the raw latent means, measured after training (identity before).
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.frame_channels) - 1)

    def replace(self, **changes: Any) -> "SmallVAEConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SmallVAEConfig":
        return dataclass_from_dict(cls, data, "SmallVAEConfig")

    def validate(self) -> None:
        if len(self.frame_channels) < 1 or min(self.frame_channels) < 1:
            raise AstraError(f"frame_channels must be a non-empty tuple of positive widths, got {self.frame_channels}")
        if self.temporal_kernel < 1:
            raise AstraError(f"temporal_kernel must be >= 1, got {self.temporal_kernel}")
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.z_dim:
                raise AstraError(f"{name} has {len(value)} entries, expected z_dim={self.z_dim}")


SMALL_VAE_PRESETS: dict[str, SmallVAEConfig] = {
    # The shipped one: 64x64 video -> 16x16x16 latents.
    "astra-small-vae": SmallVAEConfig(),
    # Unit tests: a few thousand parameters.
    "astra-tiny-vae": SmallVAEConfig(
        z_dim=4, frame_channels=(8, 12), latent_channels_hidden=16, latent_res_blocks=1, resolution=(16, 16)
    ),
}


class StreamState(dict):
    """Causal-conv caches for streaming: maps each CausalConv3d to the last input frames it saw."""


class RMSNorm(nn.Module):
    """Channel RMS norm (as in Wan): per position, so it never mixes frames and keeps causality."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.scale = math.sqrt(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return F.normalize(x, dim=1) * self.scale * self.gamma.view(shape)


class CausalConv3d(nn.Conv3d):
    """3-D conv over [B, C, F, H, W] that only looks back in time. Without a state the past is zeros;
    with a `StreamState` the past is the tail of the previous chunk, so chunks concatenate exactly."""

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int, spatial_kernel: int = 3):
        super().__init__(
            in_channels,
            out_channels,
            (temporal_kernel, spatial_kernel, spatial_kernel),
            padding=(0, spatial_kernel // 2, spatial_kernel // 2),
        )
        self.history = temporal_kernel - 1

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        if self.history == 0:
            return super().forward(x)
        past = state.get(self) if state is not None else None
        if past is None:
            past = x.new_zeros(x.shape[0], x.shape[1], self.history, *x.shape[3:])
        x = torch.cat([past, x], dim=2)
        if state is not None:
            state[self] = x[:, :, -self.history :].detach()
        return super().forward(x)


class FrameResBlock(nn.Module):
    """Per-frame residual block on [N, C, H, W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = RMSNorm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = RMSNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class LatentResBlock(nn.Module):
    """Residual block on latent frames: a causal temporal conv, then a per-frame conv."""

    def __init__(self, channels: int, temporal_kernel: int):
        super().__init__()
        self.norm1 = RMSNorm(channels)
        self.conv1 = CausalConv3d(channels, channels, temporal_kernel)
        self.norm2 = RMSNorm(channels)
        self.conv2 = CausalConv3d(channels, channels, 1)

    def forward(self, x: torch.Tensor, state: StreamState | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), state)
        return x + self.conv2(F.silu(self.norm2(h)))


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    return x.transpose(1, 2).reshape(b * t, c, h, w)


def _batch_to_frames(x: torch.Tensor, batch: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(batch, n // batch, c, h, w).transpose(1, 2)


class SmallEncoder(nn.Module):
    def __init__(self, config: SmallVAEConfig):
        super().__init__()
        widths = config.frame_channels
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for level, width in enumerate(widths):
            blocks: list[nn.Module] = [FrameResBlock(width) for _ in range(config.frame_res_blocks)]
            if level + 1 < len(widths):
                blocks.append(nn.Conv2d(width, widths[level + 1], 3, stride=2, padding=1))
            self.levels.append(nn.Sequential(*blocks))
        hidden = config.latent_channels_hidden
        self.time_in = CausalConv3d(widths[-1] * TEMPORAL_STRIDE, hidden, 1)  # the 4 stacked frames
        self.latent_blocks = nn.ModuleList(
            LatentResBlock(hidden, config.temporal_kernel) for _ in range(config.latent_res_blocks)
        )
        self.norm_out = RMSNorm(hidden)
        self.conv_out = CausalConv3d(hidden, 2 * config.z_dim, 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 4k+1, H, W] -> mean and log-variance stacked on channels [B, 2z, k+1, h, w]."""
        batch = video.shape[0]
        video = torch.cat([video[:, :, :1].expand(-1, -1, TEMPORAL_STRIDE - 1, -1, -1), video], dim=2)
        x = self.conv_in(_frames_to_batch(video))
        for level in self.levels:
            x = level(x)
        x = _batch_to_frames(x, batch)  # [B, C, 4(k+1), h, w]
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // TEMPORAL_STRIDE, TEMPORAL_STRIDE, h, w).transpose(2, 3)
        x = self.time_in(x.reshape(b, c * TEMPORAL_STRIDE, t // TEMPORAL_STRIDE, h, w))
        for block in self.latent_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class ReferenceEncoder(nn.Module):
    """Features of the reference frame at every decoder resolution, added to the decoder's frames through
    zero-initialised 1x1 convs, and a per-pixel gate in [0, 1] through which the decoder copies the reference's
    pixels where nothing moved. The gate sees the decoder's finest features, its decoded frame and the reference, so
    it can tell static pixels (decoded ~ reference) from moving ones; its last conv is zero-initialised, so it starts
    closed. A reference path added to a trained decoder therefore starts out as that decoder."""

    def __init__(self, config: SmallVAEConfig):
        super().__init__()
        widths = config.frame_channels  # finest first
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for level, width in enumerate(widths):
            blocks: list[nn.Module] = [FrameResBlock(width)]
            if level > 0:
                blocks.insert(0, nn.Conv2d(widths[level - 1], width, 3, stride=2, padding=1))
            self.levels.append(nn.Sequential(*blocks))
        self.to_decoder = nn.ModuleList(nn.Conv2d(width, width, 1) for width in widths)
        gate_inputs = widths[0] + 2 * config.in_channels
        self.copy_gate = nn.Sequential(
            nn.Conv2d(gate_inputs, widths[0], 3, padding=1), nn.SiLU(), nn.Conv2d(widths[0], 1, 3, padding=1)
        )
        for conv in [*self.to_decoder, self.copy_gate[-1]]:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, reference: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] -> one feature map per decoder level, coarsest first (the decoder's order)."""
        x = self.conv_in(reference)
        features = []
        for level, project in zip(self.levels, self.to_decoder):
            x = level(x)
            features.append(project(x))
        return features[::-1]


class SmallDecoder(nn.Module):
    def __init__(self, config: SmallVAEConfig):
        super().__init__()
        widths = config.frame_channels[::-1]  # coarsest first
        hidden = config.latent_channels_hidden
        self.time_in = CausalConv3d(config.z_dim, hidden, config.temporal_kernel)
        self.latent_blocks = nn.ModuleList(
            LatentResBlock(hidden, config.temporal_kernel) for _ in range(config.latent_res_blocks)
        )
        self.norm_mid = RMSNorm(hidden)
        # Depth-to-time: one latent frame -> TEMPORAL_STRIDE frames of features.
        self.time_out = CausalConv3d(hidden, widths[0] * TEMPORAL_STRIDE, 1)
        self.levels = nn.ModuleList()
        for level, width in enumerate(widths):
            blocks: list[nn.Module] = [FrameResBlock(width) for _ in range(config.frame_res_blocks)]
            if level + 1 < len(widths):
                upsample = nn.Upsample(scale_factor=2.0, mode="nearest")
                blocks += [upsample, nn.Conv2d(width, widths[level + 1], 3, padding=1)]
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = RMSNorm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], config.in_channels, 3, padding=1)
        self.reference = ReferenceEncoder(config) if config.reference_frame else None

    def forward(
        self,
        latents: torch.Tensor,
        state: StreamState | None = None,
        first_chunk: bool = True,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, z, f, h, w] raw latents -> [B, 3, 4f (-3 when `first_chunk`), H, W] frames, unclamped.

        With a reference path, `reference` [B, 3, H, W] is the newest frame known before these latents (for the
        first chunk the real start image they encode; None = none known: the path adds nothing); latent frames are
        then decoded one at a time, each seeing the last frame decoded before it (clamped, as it is shown), so a
        clip decodes exactly as it streams."""
        if self.reference is None:
            return self._decode(latents, state, first_chunk, None)
        state = StreamState() if state is None else state
        chunks = []
        for index in range(latents.shape[2]):
            frames = self._decode(latents[:, :, index : index + 1], state, first_chunk and index == 0, reference)
            chunks.append(frames)
            reference = frames[:, :, -1].clamp(-1.0, 1.0)
        return torch.cat(chunks, dim=2)

    def _decode(
        self, latents: torch.Tensor, state: StreamState | None, first_chunk: bool, reference: torch.Tensor | None
    ) -> torch.Tensor:
        x = self.time_in(latents, state)
        for block in self.latent_blocks:
            x = block(x, state)
        x = self.time_out(F.silu(self.norm_mid(x)))
        b, c, f, h, w = x.shape
        x = x.reshape(b, c // TEMPORAL_STRIDE, TEMPORAL_STRIDE, f, h, w).transpose(2, 3)
        x = x.reshape(b, c // TEMPORAL_STRIDE, f * TEMPORAL_STRIDE, h, w)
        if first_chunk:  # latent frame 0 stands for video frame 0 alone: keep the last of its 4 slots
            x = x[:, :, TEMPORAL_STRIDE - 1 :]
        frames = x.shape[2]
        x = _frames_to_batch(x)
        features = self.reference(reference) if reference is not None else None  # forward passes None without a path
        for index, level in enumerate(self.levels):
            if features is not None:  # the same reference for every frame of the chunk
                x = x + features[index].repeat_interleave(frames, dim=0)
            x = level(x)
        x = F.silu(self.norm_out(x))
        video = self.conv_out(x)
        if features is not None:  # a hard-sigmoid gate: exactly closed at initialisation, still learning there
            reference = reference.repeat_interleave(frames, dim=0)
            gate = self.reference.copy_gate(torch.cat([x, video, reference], dim=1)).clamp(0.0, 1.0)
            video = video + gate * (reference - video)
        return _batch_to_frames(video, b)


class SmallVAE(nn.Module):
    """The `VideoVAE` protocol on top of `SmallEncoder` / `SmallDecoder` (see module docstring)."""

    temporal_stride = TEMPORAL_STRIDE

    def __init__(self, config: SmallVAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = SmallEncoder(config)
        self.decoder = SmallDecoder(config)
        mean = torch.tensor(config.latents_mean) if config.latents_mean is not None else torch.zeros(config.z_dim)
        std = torch.tensor(config.latents_std) if config.latents_std is not None else torch.ones(config.z_dim)
        # Buffers, not parameters: they come from the config and are not saved in the weights file.
        self.register_buffer("latents_mean", mean.float().view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.float().view(1, -1, 1, 1, 1), persistent=False)

    @property
    def latent_channels(self) -> int:
        return self.config.z_dim

    @property
    def spatial_stride(self) -> int:
        return self.config.spatial_stride

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store measured per-channel statistics (in the config and the normalisation buffers)."""
        self.config = self.config.replace(latents_mean=tuple(mean.tolist()), latents_std=tuple(std.tolist()))
        self.latents_mean.copy_(mean.view(1, -1, 1, 1, 1))
        self.latents_std.copy_(std.view(1, -1, 1, 1, 1))

    def encode_distribution(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) mean and log-variance of the posterior; used by training."""
        check_video(video, self.config.in_channels, self.spatial_stride)
        mean, logvar = self.encoder(video).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def normalize(self, raw_latents: torch.Tensor) -> torch.Tensor:
        return (raw_latents - self.latents_mean) / self.latents_std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.latents_std + self.latents_mean

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.encode_distribution(video)[0])

    def decode_raw(self, raw_latents: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable decode of raw latents; unclamped (training uses this). `start`: see `decode`."""
        return self.decoder(raw_latents, reference=self._start_frame(start, raw_latents))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised latents whose frame 0 is the start -> video in [-1, 1]. `start` [B, 3, 1, H, W]: the real
        start frame, when known, for a decoder with a reference path (others ignore it)."""
        check_latents(latents, self.latent_channels)
        return self.decoder(self.denormalize(latents), reference=self._start_frame(start, latents)).clamp(-1.0, 1.0)

    def stream_decoder(self, start: torch.Tensor | None = None) -> "SmallStreamDecoder":
        return SmallStreamDecoder(self, start)

    def _start_frame(self, start: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor | None:
        """The start frame [B, 3, H, W] the reference path sees, checked against the latents it goes with."""
        if start is None or not self.config.reference_frame:
            return None
        check_video(start, self.config.in_channels, self.spatial_stride)
        b, _, _, h, w = latents.shape
        expected = (b, self.config.in_channels, 1, h * self.spatial_stride, w * self.spatial_stride)
        if tuple(start.shape) != expected:
            raise AstraError(f"start frame has shape {tuple(start.shape)}; these latents need {expected}")
        return start[:, :, 0]


class SmallStreamDecoder:
    """Decodes latent chunks one after another; the concatenated output equals `SmallVAE.decode` of
    the concatenated latents (the causal convs carry their last inputs across chunks, and a reference path the
    last frame shown)."""

    def __init__(self, vae: SmallVAE, start: torch.Tensor | None = None):
        self.vae = vae
        self.start = start
        self.state = StreamState()
        self.frames_seen = 0
        self.last_frame: torch.Tensor | None = None

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        check_latents(latents, self.vae.latent_channels)
        first = self.frames_seen == 0
        self.frames_seen += latents.shape[2]
        reference = self.vae._start_frame(self.start, latents) if first else self.last_frame
        frames = self.vae.decoder(self.vae.denormalize(latents), self.state, first_chunk=first, reference=reference)
        frames = frames.clamp(-1.0, 1.0)
        self.last_frame = frames[:, :, -1] if self.vae.config.reference_frame else None
        return frames

    def reset(self) -> None:
        self.state.clear()
        self.frames_seen = 0
        self.last_frame = None


def add_reference_path(vae: SmallVAE) -> SmallVAE:
    """`vae` with a (zero-initialised) reference path added to its decoder: it decodes exactly as before until
    that path is trained (`astra vae train --init-from ... --reference-frame`)."""
    if vae.config.reference_frame:
        return vae
    extended = SmallVAE(vae.config.replace(reference_frame=True))
    missing, unexpected = extended.load_state_dict(vae.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("decoder.reference.") for name in missing), (missing, unexpected)
    return extended


def save_small_vae(
    vae: SmallVAE, folder: str | Path, metadata: dict[str, Any] | None = None, extra_files: dict[str, bytes] | None = None
) -> Path:
    """Write `model.safetensors` + `config.json` (config, latent statistics, metadata) and any `extra_files` (a
    training run's optimizer state) into a folder staged beside `folder`, which then replaces it: a reader, or a
    resumed run, finds every file of one checkpoint or every file of the previous one, never a mix. An existing
    `folder` may hold only such files."""
    from safetensors.torch import save

    folder = Path(folder)
    files = {WEIGHTS_FILE: b"", CONFIG_FILE: b"", **(extra_files or {})}
    if folder.exists():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in files) if folder.is_dir() else [folder.name]
        if foreign:
            raise CheckpointError(f"refusing to replace {folder}: it holds other files than a small-VAE checkpoint's "
                                  f"({', '.join(foreign[:5])})")
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in vae.state_dict().items()}
    files[WEIGHTS_FILE] = save(state)
    config = {"type": VAE_TYPE, **vae.config.to_dict(), "metadata": metadata or {}}
    files[CONFIG_FILE] = json.dumps(config, indent=2).encode()
    staging = staging_folder(folder)
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_small_vae_config(folder: str | Path) -> tuple[SmallVAEConfig, dict[str, Any]]:
    path = Path(folder) / CONFIG_FILE
    data = read_json_object(path, label=f"small-VAE config {path}", error=CheckpointError)
    if data.pop("type", None) != VAE_TYPE:
        raise CheckpointError(f"{path} is not an {VAE_TYPE} config (its 'type' field differs)")
    metadata = data.pop("metadata", {})
    try:
        return SmallVAEConfig.from_dict(data), metadata
    except ConfigError as error:
        raise CheckpointError(f"{path}: invalid VAE config: {error}") from None


def load_small_vae(folder: str | Path) -> SmallVAE:
    """Strict load of a folder written by `save_small_vae`; CheckpointError names bad keys."""
    folder = Path(folder)
    config, _ = read_small_vae_config(folder)
    vae = SmallVAE(config)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"missing {weights}")
    state = read_state_dict(weights)
    check_state_dict(vae.state_dict(), state, weights)
    vae.load_state_dict(state, strict=True)
    return vae.eval()
