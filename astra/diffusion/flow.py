"""Rectified-flow (flow matching) training math shared by the trainer and the sampler.

Conventions (docs/architecture.md): `x_t = (1 - t) x0 + t eps`, `t = 0` is clean, the network predicts the
velocity `eps - x0`. Timesteps are per sample `[B]` or per latent frame `[B, F]`; both broadcast over
latents shaped `[B, C, F, H, W]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TIMESTEP_SAMPLINGS = ("logit_normal", "uniform")
LOSS_WEIGHTINGS = ("none", "bell")


@dataclass(frozen=True)
class FlowConfig:
    """How training draws flow times and weights the loss."""

    timestep_sampling: str = "logit_normal"  # "logit_normal" (SD3) or "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # t' = s t / (1 + (s - 1) t); s > 1 spends more samples at high noise (large latents)
    loss_weighting: str = "none"  # "none" or "bell": exp(-2 (t - 0.5)^2), the authors' weighting
    # A logit-normal draw almost never lands near t = 1 (above 0.97 once in 4,000), yet every sampled chunk starts
    # there, and that first step is where the actions decide the layout: this fraction of the flow times is drawn
    # uniformly from [high_noise_from, 1) instead.
    high_noise_fraction: float = 0.0
    high_noise_from: float = 0.9

    def validate(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {self.timestep_sampling!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be > 0, got {self.logit_std}")
        if not 0.0 <= self.high_noise_fraction <= 1.0:
            raise ValueError(f"high_noise_fraction must be in [0, 1], got {self.high_noise_fraction}")
        if not 0.0 <= self.high_noise_from < 1.0:
            raise ValueError(f"high_noise_from must be in [0, 1), got {self.high_noise_from}")


def shift_timesteps(timesteps: torch.Tensor, shift: float) -> torch.Tensor:
    """Resolution-dependent time shift (SD3 / Wan): keeps 0 and 1 fixed, pushes mass towards 1 for shift > 1."""
    if shift == 1.0:
        return timesteps
    return shift * timesteps / (1.0 + (shift - 1.0) * timesteps)


def sample_timesteps(
    batch_size: int, config: FlowConfig, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Training flow times `[batch_size]` in (0, 1), drawn by `config` (then shifted; then the high-noise fraction
    replaced by uniform draws from [high_noise_from, 1), with no extra draws when that fraction is 0)."""
    if config.timestep_sampling == "logit_normal":
        normal = torch.randn(batch_size, generator=generator, device=device)
        timesteps = torch.sigmoid(config.logit_mean + config.logit_std * normal)
    elif config.timestep_sampling == "uniform":
        timesteps = torch.rand(batch_size, generator=generator, device=device)
    else:
        raise ValueError(f"unknown timestep_sampling {config.timestep_sampling!r}; known: {TIMESTEP_SAMPLINGS}")
    timesteps = shift_timesteps(timesteps, config.shift)
    if config.high_noise_fraction > 0:
        high = torch.rand(batch_size, generator=generator, device=device) < config.high_noise_fraction
        tail = config.high_noise_from + (1.0 - config.high_noise_from) * torch.rand(
            batch_size, generator=generator, device=device
        )
        timesteps = torch.where(high, tail, timesteps)
    return timesteps


def _broadcast(timesteps: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """`[B]` or `[B, F]` timesteps -> a view that broadcasts against `[B, C, F, H, W]` latents."""
    if latents.ndim != 5:
        raise ValueError(f"latents must be [B, C, F, H, W], got shape {tuple(latents.shape)}")
    batch, _, frames = latents.shape[:3]
    if timesteps.shape == (batch,):
        return timesteps.view(batch, 1, 1, 1, 1).to(latents.dtype)
    if timesteps.shape == (batch, frames):
        return timesteps.view(batch, 1, frames, 1, 1).to(latents.dtype)
    raise ValueError(
        f"timesteps of shape {tuple(timesteps.shape)} do not match latents {tuple(latents.shape)}: "
        f"expected [{batch}] or [{batch}, {frames}]"
    )


def add_noise(clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """`x_t = (1 - t) x0 + t eps`."""
    if noise.shape != clean.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from latents shape {tuple(clean.shape)}")
    t = _broadcast(timesteps, clean)
    return (1.0 - t) * clean + t * noise


def velocity_target(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target `eps - x0` (constant along the straight path)."""
    return noise - clean


def loss_weight(timesteps: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-sample (or per-frame) weight of the velocity loss."""
    if weighting == "none":
        return torch.ones_like(timesteps)
    if weighting == "bell":
        return torch.exp(-2.0 * (timesteps - 0.5) ** 2)
    raise ValueError(f"unknown loss_weighting {weighting!r}; known: {LOSS_WEIGHTINGS}")


def flow_matching_loss(
    predicted_velocity: torch.Tensor,
    target_velocity: torch.Tensor,
    timesteps: torch.Tensor,
    weighting: str = "none",
    per_sample: bool = False,
    element_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean squared velocity error, averaged over all elements (weights are normalised to mean 1 over the
    batch), or with `per_sample` over each sample's elements ([B]; their mean is the batch loss). `element_weight`
    (broadcastable to the velocity, e.g. `[B, 1, T, H, W]`) multiplies the squared error as given."""
    if predicted_velocity.shape != target_velocity.shape:
        raise ValueError(
            f"predicted velocity {tuple(predicted_velocity.shape)} != target {tuple(target_velocity.shape)}"
        )
    weight = loss_weight(timesteps, weighting)
    weight = weight / weight.mean()
    squared_error = (predicted_velocity.float() - target_velocity.float()) ** 2
    weighted = squared_error * _broadcast(weight, squared_error)
    if element_weight is not None:
        weighted = weighted * element_weight
    return weighted.flatten(1).mean(1) if per_sample else weighted.mean()


def copy_prior_velocity(
    noisy: torch.Tensor, timesteps: torch.Tensor, anchor: torch.Tensor, sigma: float
) -> torch.Tensor:
    """The exact flow velocity `E[eps - x0 | x_t]` if x0 were Gaussian around `anchor` with std `sigma`.

    With the copy prior the network predicts only a residual, `v = v_prior + v_net`, so a network that outputs 0
    already "copies" the anchor (the last history frame) plus Gaussian detail of size `sigma`: copying is free at
    initialisation and the network spends its capacity on what changes. Derivation: with
    `d = x_t - (1 - t) anchor = (1 - t)(x0 - anchor) + t eps` and `x0 - anchor ~ N(0, sigma^2)`,
    `E[eps - x0 | d] = (t - (1 - t) sigma^2) / ((1 - t)^2 sigma^2 + t^2) * d - anchor`. Bounded for all t in [0, 1]
    when sigma > 0 (EDM-style preconditioning around a mean instead of around 0).

    `anchor` is `[B, C, 1, H, W]` (broadcast over the target frames) or the target's shape.
    """
    if sigma <= 0 or not math.isfinite(sigma):
        raise ValueError(f"copy prior sigma must be a positive number, got {sigma}")
    t = _broadcast(timesteps, noisy)
    deviation = noisy - (1.0 - t) * anchor
    variance = (1.0 - t) ** 2 * sigma**2 + t**2
    return (t - (1.0 - t) * sigma**2) / variance * deviation - anchor


def copy_anchor(newest: torch.Tensor, motion: torch.Tensor | None) -> torch.Tensor:
    """The copy prior's anchor: the newest history frame `[B, C, 1, H, W]`, moved by the motion prior's output
    (`AstraOutput.motion`) when the model has one."""
    return newest if motion is None else warp_latents(newest, motion)


def warp_latents(anchor: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """The anchor `[B, C, 1, H, W]` moved by each target frame's global motion `[B, Ft, 3]` (shift x, shift y in
    grid units where 2 / W is one latent pixel, log zoom) -> `[B, C, Ft, H, W]`. Bilinear, border padding; zero
    motion returns the anchor exactly. Used as the copy-prior anchor of models with a motion prior."""
    batch, channels, _, height, width = anchor.shape
    frames = motion.shape[1]
    shift_x, shift_y, log_zoom = motion.float().unbind(-1)
    scale = torch.exp(-log_zoom).flatten()  # zooming in samples a smaller region of the anchor
    theta = torch.zeros(batch * frames, 2, 3, device=anchor.device)
    theta[:, 0, 0], theta[:, 1, 1] = scale, scale
    theta[:, 0, 2], theta[:, 1, 2] = shift_x.flatten(), shift_y.flatten()
    grid = F.affine_grid(theta, [batch * frames, channels, height, width], align_corners=False)
    source = anchor[:, :, 0].float().repeat_interleave(frames, dim=0)
    warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return warped.view(batch, frames, channels, height, width).transpose(1, 2).to(anchor.dtype)
