"""Euler flow-matching sampler: integrates the velocity from t = 1 (noise) to t = 0 (clean) in N steps.

Every target frame shares the current t (passed per frame, `[B, Ft]`, as the model expects); history frames
are clean (`history_timesteps` default 0) unless the caller says otherwise. With a KV cache the history lives in
the cache and `history_latents` stays None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from astra.diffusion.flow import shift_timesteps
from astra.diffusion.guidance import guided_velocity

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    num_steps: int = 50
    shift: float = 5.0  # the authors' inference shift for Wan2.1 at 480x832
    action_guidance: float = 1.0  # action-free guidance scale (1 = off; the paper uses 3.0)
    text_guidance: float = 1.0  # text CFG scale (1 = off)
    copy_prior_sigma: float | None = None  # must match the training run's copy prior (None = off)
    # Flow times (lo, hi) at which action guidance applies; outside them the step uses the conditional velocity
    # alone. Guidance decides what moves where while the chunk is still mostly noise; near t = 0 it only amplifies
    # the conditional pass's residual error (Kynkäänniemi et al. 2024, "guidance in a limited interval").
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    guidance_outside: float = 1.0  # the action scale outside the interval: 1 = conditional, 0 = action-free
    guide_anchor: bool = False  # guidance moves the copy prior's anchor too (guided_velocity)

    def validate(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        low, high = self.guidance_interval
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {self.guidance_interval}")

    def action_scale_at(self, t: float) -> float:
        """The action guidance scale of a step that starts at flow time t."""
        low, high = self.guidance_interval
        return self.action_guidance if low <= t <= high else self.guidance_outside

    @property
    def passes_action_scale(self) -> float:
        """The action scale that sizes every step's passes (`guidance_passes`): all steps run the same passes, so
        that one KV cache prefilled for them serves each step, and any step combining at a scale other than 1
        (inside the interval or outside it) needs the action-free pass."""
        covers_all = tuple(self.guidance_interval) == (0.0, 1.0)
        return self.action_guidance if self.action_guidance != 1.0 or covers_all else self.guidance_outside


def timestep_schedule(num_steps: int, shift: float, device: str | torch.device = "cpu") -> torch.Tensor:
    """`num_steps + 1` flow times from 1 down to 0, uniformly spaced then shifted."""
    return shift_timesteps(torch.linspace(1.0, 0.0, num_steps + 1, device=device), shift)


def euler_sample(
    velocity_fn: VelocityFn, noise: torch.Tensor, num_steps: int, shift: float, progress: bool = False
) -> torch.Tensor:
    """Integrate `dx/dt = v(x, t)` from `noise` at t = 1 to t = 0; `velocity_fn(x, t_frames [B, F])`."""
    batch, frames = noise.shape[0], noise.shape[2]
    schedule = timestep_schedule(num_steps, shift, noise.device)
    latents = noise
    for step in tqdm(range(num_steps), desc="denoise", disable=not progress, leave=False):
        t, t_next = schedule[step], schedule[step + 1]
        velocity = velocity_fn(latents, t.expand(batch, frames))
        latents = latents + (t_next - t) * velocity
    return latents


@torch.no_grad()
def sample_chunk(
    model: torch.nn.Module,
    noise: torch.Tensor,
    *,
    history_latents: torch.Tensor | None = None,
    history_timesteps: torch.Tensor | None = None,
    actions: Any = None,
    text: torch.Tensor | None = None,
    null_text: torch.Tensor | None = None,
    kv_cache: Any = None,
    anchor: torch.Tensor | None = None,
    config: SamplerConfig = SamplerConfig(),
    progress: bool = False,
) -> torch.Tensor:
    """Denoise one target chunk `[B, C, Ft, H, W]` given history (or a KV cache), actions and text."""
    config.validate()
    if noise.ndim != 5:
        raise ValueError(f"noise must be [B, C, Ft, H, W], got shape {tuple(noise.shape)}")
    if kv_cache is not None and history_latents is not None:
        raise ValueError("pass either history_latents or kv_cache, not both")

    def velocity_fn(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        # every target frame shares the step's flow time
        return guided_velocity(
            model,
            latents,
            timesteps,
            history_latents=history_latents,
            history_timesteps=history_timesteps,
            actions=actions,
            text=text,
            null_text=null_text,
            kv_cache=kv_cache,
            action_scale=config.passes_action_scale,
            step_action_scale=config.action_scale_at(float(timesteps[0, 0])),
            text_scale=config.text_guidance,
            copy_prior_sigma=config.copy_prior_sigma,
            anchor=anchor,
            guide_anchor=config.guide_anchor,
        )

    return euler_sample(velocity_fn, noise, config.num_steps, config.shift, progress)
