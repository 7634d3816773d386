"""Pieces shared by both VAEs: input validation, strict state-dict checks, atomic writes."""

from __future__ import annotations

from pathlib import Path

import torch

from astra.errors import AstraError, CheckpointError

TEMPORAL_STRIDE = 4  # video frames 0..4k -> latent frames 0..k (the first frame alone)


def check_video(video: torch.Tensor, in_channels: int, spatial_stride: int) -> None:
    """Raise a clear error unless `video` is [B, C, 4k+1, H, W] with H, W multiples of the stride."""
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != in_channels:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise AstraError(f"VAE encode expects video [B, {in_channels}, T, H, W], got {shape}")
    frames = video.shape[2]
    if (frames - 1) % TEMPORAL_STRIDE:
        raise AstraError(
            f"VAE encode needs T = 4k+1 frames (1, 5, 9, 17, ...), got T={frames}; "
            f"trim to {frames - (frames - 1) % TEMPORAL_STRIDE} frames"
        )
    height, width = video.shape[-2:]
    if height % spatial_stride or width % spatial_stride:
        raise AstraError(f"VAE encode needs height and width multiples of {spatial_stride}, got {height}x{width}")


def check_latents(latents: torch.Tensor, channels: int) -> None:
    if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != channels:
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise AstraError(f"VAE decode expects latents [B, {channels}, F, h, w], got {shape}")
    if latents.shape[2] < 1:
        raise AstraError("VAE decode got latents with zero frames")


def check_state_dict(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: Path) -> None:
    """Strict-load check: CheckpointError listing missing, unexpected and mis-shaped names."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [
        f"{name} {tuple(state[name].shape)} != {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not match the model:"]
        for title, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if names:
                shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointError("\n".join(lines))


