"""Training batches: what one optimisation step consumes, and where it comes from.

Each batch is a pure function of (seed, rank, step): resuming at step k reproduces exactly the batches an
uninterrupted run would have seen, so the data position stored in a checkpoint is just the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from astra.actions.modalities import get_modality


@dataclass
class TrainBatch:
    history_latents: torch.Tensor | None  # [B, C, Fh, h, w] oldest -> newest, or None (no history)
    target_latents: torch.Tensor  # [B, C, Ft, h, w]
    action_values: torch.Tensor  # [B, Fh + Ft, width] one action per latent frame (zero-padded to max width)
    modality: tuple[str, ...]  # one modality name per sample
    text: torch.Tensor | None = None  # [B, L, text_dim] or None
    source: tuple[str, ...] | None = None  # one source (world or dataset) per sample, for per-source validation

    @property
    def size(self) -> int:
        return self.target_latents.shape[0]

    def to(self, device: torch.device) -> "TrainBatch":
        move = lambda x: None if x is None else x.to(device, non_blocking=True)  # noqa: E731
        return TrainBatch(
            move(self.history_latents), move(self.target_latents), move(self.action_values), self.modality,
            move(self.text), self.source,
        )


class BatchSource(Protocol):
    sources: tuple[str, ...]  # the sources its batches draw from, sorted

    def batch(self, step: int, rank: int) -> TrainBatch: ...


SEED_SPREAD = 1_000_003  # step_generator's multiplier: (seed, rank, step) stay distinct for rank, step below it
MAX_GENERATOR_SEED = 2**64 // (8 * SEED_SPREAD**2) - 1  # the largest seed whose generator seeds fit torch's 64 bits


def step_generator(seed: int, rank: int, step: int, stream: int) -> torch.Generator:
    """A CPU generator unique to (seed, rank, step, stream): independent streams for data and for noise."""
    return torch.Generator().manual_seed(((seed * SEED_SPREAD + rank) * SEED_SPREAD + step) * 8 + stream)


@dataclass
class SyntheticBatches:
    """Random latents that move by their actions: frame c is frame c-1 rolled along width by the 'forward' key.

    Learnable (the action decides the motion, copying the newest frame is a strong but imperfect baseline), so
    smoke runs show the loss falling; used by tests and the samples/s benchmark. Modality keyboard_mouse.
    """

    channels: int
    latent_size: tuple[int, int]
    history_range: tuple[int, int]
    target_frames: int
    batch_size: int
    seed: int = 0
    modality: str = "keyboard_mouse"
    sources: tuple[str, ...] = ("synthetic",)

    def batch(self, step: int, rank: int) -> TrainBatch:
        generator = step_generator(self.seed, rank, step, stream=0)
        lo, hi = self.history_range
        history_frames = int(torch.randint(lo, hi + 1, (), generator=generator))
        frames = history_frames + self.target_frames
        width = get_modality(self.modality).width
        forward = torch.randint(0, 2, (self.batch_size, frames), generator=generator)
        forward[:, 0] = 0  # latent frame 0 carries the zero action
        actions = torch.zeros(self.batch_size, frames, width)
        actions[:, :, 0] = forward.float()
        first = torch.randn(self.batch_size, self.channels, *self.latent_size, generator=generator)
        offsets = forward.cumsum(dim=1)
        latents = torch.stack(
            [torch.stack([first[b].roll(int(offsets[b, f]), dims=-1) for f in range(frames)], dim=1)
             for b in range(self.batch_size)]
        )
        history = latents[:, :, :history_frames] if history_frames else None
        return TrainBatch(
            history, latents[:, :, history_frames:], actions, (self.modality,) * self.batch_size,
            source=self.sources * self.batch_size,
        )
