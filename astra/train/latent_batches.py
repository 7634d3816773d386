"""Training batches from encoded latents (`astra data encode`): astra.data.sampler.SegmentSampler per step."""

from __future__ import annotations

import numpy as np

from astra.data.sampler import LatentDataset, SegmentSampler
from astra.errors import DataError
from astra.train.batches import TrainBatch
from astra.train.config import TrainConfig


class LatentBatches:
    """Joint training over sources with `config.world_weights`; batch k of rank r is drawn from a numpy
    generator seeded by (seed, rank, k), so a resumed run sees the same data as an uninterrupted one.

    `split="heldout"` gives the validation batches: the held-out clips of the sources training draws from, every
    source with held-out clips weighted equally (so each world counts alike in the pooled validation loss).
    """

    def __init__(self, config: TrainConfig, target_frames: int, split: str = "train"):
        self.config = config
        dataset = LatentDataset(config.data)
        weights = config.world_weights or None
        if split != "train":
            present = {entry["source"] for entry in dataset.entries if entry["split"] == split}
            chosen = sorted(present if weights is None else present & {s for s, w in weights.items() if w > 0})
            if not chosen:
                raise DataError(
                    f"{config.data}: no {split!r} clip of the trained sources to validate on; encode held-out "
                    f"episodes (`astra data encode` takes every split) or set val_every=0"
                )
            weights = dict.fromkeys(chosen, 1.0)
        self.sampler = SegmentSampler(
            dataset,
            history_range=config.history_range,
            target_frames=target_frames,
            weights=weights,
            split=split,
            seed=config.seed,
        )
        self.sources = tuple(sorted({dataset.entries[i]["source"] for i in self.sampler.clips}))

    def batch(self, step: int, rank: int) -> TrainBatch:
        rng = np.random.default_rng([self.config.seed, rank, step])
        segments = self.sampler.batch(self.config.batch_size, rng)
        return TrainBatch(
            segments.history_latents.float(), segments.target_latents.float(), segments.actions.float(),
            segments.modality, source=segments.source,
        )
