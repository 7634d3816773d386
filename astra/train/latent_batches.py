"""Training batches from encoded latents (`astra data encode`): astra.data.sampler.SegmentSampler per step."""

from __future__ import annotations

import numpy as np

from astra.data.sampler import LatentDataset, SegmentSampler
from astra.train.batches import TrainBatch
from astra.train.config import TrainConfig


class LatentBatches:
    """Joint training over sources with `config.world_weights`; batch k of rank r is drawn from a numpy
    generator seeded by (seed, rank, k), so a resumed run sees the same data as an uninterrupted one."""

    def __init__(self, config: TrainConfig, target_frames: int):
        self.config = config
        self.sampler = SegmentSampler(
            LatentDataset(config.data),
            history_range=config.history_range,
            target_frames=target_frames,
            weights=config.world_weights or None,
            split="train",
            seed=config.seed,
        )

    def batch(self, step: int, rank: int) -> TrainBatch:
        rng = np.random.default_rng([self.config.seed, rank, step])
        segments = self.sampler.batch(self.config.batch_size, rng)
        return TrainBatch(
            segments.history_latents.float(), segments.target_latents.float(), segments.actions.float(), segments.modality
        )
