"""Stats anchor: pull generated latent frames' colour statistics toward the start frame's.

Rollouts of a small model drift chunk by chunk: the latents' colour wanders and their contrast fades to a flat field.
Anchoring moves each generated frame a fraction `anchor` of the way back toward the start frame's spatial statistics
(0 leaves it as sampled, 1 matches them) while keeping its spatial pattern. Three kinds of match:

- "mean": each channel's spatial mean only (the colour), leaving the contrast as sampled;
- "channels": each channel's spatial mean (linearly) and standard deviation (geometrically), independently;
- "covariance": the mean and the full channel covariance, through the power `anchor` of the linear map that carries
  the frame's covariance onto the start's (the optimal-transport map between the two Gaussians). Channels drifting
  together (a hue the scene never had) are pulled back too; with diagonal covariances it is the "channels" match.
"""

from __future__ import annotations

import torch

MATCHES = ("mean", "channels", "covariance")
# Ridge added to each covariance, as a fraction of its mean variance: keeps the matrix roots finite for a flat frame.
COVARIANCE_RIDGE = 1e-6


def spatial_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, F, H, W] -> the mean and standard deviation over H and W per channel and frame, each [B, C, F, 1, 1]."""
    values = latents.float()  # bf16 on GPU: reduce in float32
    mean, spread = values.mean(dim=(-2, -1), keepdim=True), values.std(dim=(-2, -1), keepdim=True)
    return mean.to(latents.dtype), spread.to(latents.dtype)


def anchor_stats(latents: torch.Tensor, start: torch.Tensor, anchor: float, match: str = "channels") -> torch.Tensor:
    """Generated latents [B, C, F, H, W] with every frame's statistics pulled `anchor` of the way toward those of the
    start frame `start` [B, C, 1, H, W]."""
    if anchor == 0.0:
        return latents
    if match == "mean":
        mean, start_mean = spatial_stats(latents)[0], spatial_stats(start)[0]
        return latents + anchor * (start_mean - mean)
    if match == "channels":
        return _anchor_channels(latents, start, anchor)
    if match == "covariance":
        return _anchor_covariance(latents, start, anchor)
    raise ValueError(f"unknown stats anchor match {match!r}; expected one of {MATCHES}")


def _anchor_channels(latents: torch.Tensor, start: torch.Tensor, anchor: float) -> torch.Tensor:
    mean, spread = spatial_stats(latents)
    start_mean, start_spread = spatial_stats(start)
    target_mean = torch.lerp(mean, start_mean, anchor)
    target_spread = spread.pow(1.0 - anchor) * start_spread.pow(anchor)
    spread = spread.clamp_min(torch.finfo(latents.dtype).tiny)
    return target_mean + (latents - mean) * (target_spread / spread)


def _anchor_covariance(latents: torch.Tensor, start: torch.Tensor, anchor: float) -> torch.Tensor:
    batch, channels, frames, height, width = latents.shape
    # [B, F, C, H*W] in float64: matrix roots of near-singular covariances need the precision (on the CPU where the
    # device has no float64, as Apple's MPS; the matrices are C x C, tiny)
    device = torch.device("cpu") if latents.device.type == "mps" else latents.device
    pixels = latents.to(device, torch.float64).permute(0, 2, 1, 3, 4).reshape(batch, frames, channels, height * width)
    start_pixels = start.to(device, torch.float64).permute(0, 2, 1, 3, 4).reshape(batch, 1, channels, height * width)
    mean, start_mean = pixels.mean(-1, keepdim=True), start_pixels.mean(-1, keepdim=True)
    covariance, start_covariance = _covariance(pixels - mean), _covariance(start_pixels - start_mean)
    root, inverse_root = _spd_power(covariance, 0.5), _spd_power(covariance, -0.5)
    transport = inverse_root @ _spd_power(root @ start_covariance @ root, 0.5) @ inverse_root
    pull = _spd_power((transport + transport.transpose(-1, -2)) / 2, anchor)  # symmetrised against round-off
    anchored = torch.lerp(mean, start_mean, anchor) + pull @ (pixels - mean)
    anchored = anchored.reshape(batch, frames, channels, height, width).permute(0, 2, 1, 3, 4)
    return anchored.to(latents.device, latents.dtype)


def _covariance(centred: torch.Tensor) -> torch.Tensor:
    """[..., C, N] centred samples -> [..., C, C] covariance plus a small ridge."""
    covariance = centred @ centred.transpose(-1, -2) / (centred.shape[-1] - 1)
    ridge = COVARIANCE_RIDGE * covariance.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    identity = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
    return covariance + ridge[..., None, None] * identity


def _spd_power(matrix: torch.Tensor, power: float) -> torch.Tensor:
    """A symmetric positive-definite matrix to a real power, through its eigendecomposition."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(1e-12).pow(power).unsqueeze(-2)) @ vectors.transpose(-1, -2)
