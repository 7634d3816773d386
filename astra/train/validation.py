"""Held-out validation: the training objective on fixed batches the model never trains on, per source (world).

Every evaluation uses the same batches, flow times, history corruption and noise, so two checkpoints (two steps of
one run, or two runs) differ only by their weights: the comparison is paired and much less noisy than the loss's
spread over samples. Each batch is scored twice, with its true actions and with the null action on the target
frames (what action-free guidance subtracts); `action_gain` = null loss - loss is how much the prediction uses the
actions (0 for a model that ignores them, the case the action-following bar catches). Both are scored again at flow
time 1 from a clean memory (`one_shot_*`): there the input holds nothing of the target, so the loss is the error of
the network's one-shot guess of the next frame from history and actions alone, the sampler's first step, and its
action gain is the plainest measure of whether the actions are read (the usual drawn times reach t near 1 about once
in 4,000 draws; docs/results.md, session 43). A cheap check between training and the minutes-long `astra eval`,
which samples, decodes and scores pixels.
"""

from __future__ import annotations

import torch

from astra.errors import AstraError
from astra.model.config import AstraConfig
from astra.train.batches import BatchSource, step_generator
from astra.train.config import TrainConfig
from astra.train.distributed import DistInfo

VALIDATION_STREAM = 2  # generator stream of the validation noise (0: training data, 1: training noise)
ONE_SHOT_TIME = 1.0  # the flow time of the sampler's first step: pure noise in, the whole next frame to guess
# (action dropout, flow time) of each scoring pass, in the order of the sums' columns
PASSES = ((0.0, None), (1.0, None), (0.0, ONE_SHOT_TIME), (1.0, ONE_SHOT_TIME))
HELDOUT_SEED_OFFSET = 1_000_000  # synthetic data: the held-out batches come from this far-away seed


def validation_batch_source(config: TrainConfig, model_config: AstraConfig) -> BatchSource:
    """The held-out counterpart of the training batches: held-out clips of the trained sources, or synthetic
    batches of another seed."""
    target_frames = config.target_frames or model_config.chunk_frames
    if config.data == "synthetic":
        from astra.train.batches import SyntheticBatches

        return SyntheticBatches(
            model_config.in_channels, config.latent_size, config.history_range, target_frames, config.batch_size,
            config.seed + HELDOUT_SEED_OFFSET,
        )
    from astra.train.latent_batches import LatentBatches

    return LatentBatches(config, target_frames, split="heldout")


@torch.no_grad()
def validation_losses(
    model: torch.nn.Module,
    batches: BatchSource,
    config: TrainConfig,
    model_config: AstraConfig,
    info: DistInfo = DistInfo(),
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """`val_loss`, `val_null_loss`, `val_action_gain` and their `val_one_shot_*` counterparts at flow time 1,
    pooled over the `config.val_batches` batches (rounded up to a multiple of the number of processes; rank r scores
    batches r, r + world_size, ...), and the same per source as `val_loss/<source>` etc. All ranks call it (the
    forward of a sharded model is collective)."""
    from astra.train.trainer import training_loss

    if not batches.sources:
        raise AstraError("validation needs a batch source that names its sources")
    sources = list(batches.sources)
    sums = torch.zeros(len(sources), len(PASSES) + 1, dtype=torch.float64)  # per source: each pass's sum, samples
    rounds = -(-config.val_batches // info.world_size)
    was_training = model.training
    model.eval()
    try:
        for index in range(info.rank, rounds * info.world_size, info.world_size):
            batch = batches.batch(index, 0).to(info.device)
            if batch.source is None:
                raise AstraError("validation batches must name each sample's source")
            losses = []
            for dropout, flow_time in PASSES:  # true then null actions, at drawn times then t = 1; one set of draws
                generator = step_generator(config.seed, 0, index, stream=VALIDATION_STREAM)
                with torch.autocast(info.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    # always the real history and the plain loss, so runs with different recipes compare; the
                    # one-shot guess from a clean memory, so that its action gain is the actions' and not how a
                    # moved noisy anchor fares (session 43)
                    scored = config.replace(
                        action_dropout=dropout, self_history_prob=0.0, faded_memory_prob=0.0, change_weight=0.0,
                        noisy_memory_prob=config.noisy_memory_prob if flow_time is None else 0.0,
                    )
                    out = training_loss(model, batch, scored, generator, model_config, flow_time)
                losses.append(out.sample_flow_loss.double().cpu())
            for source, *pass_losses in zip(batch.source, *losses):
                sums[sources.index(source)] += torch.stack((*pass_losses, torch.ones((), dtype=torch.float64)))
    finally:
        model.train(was_training)
    if info.distributed:
        import torch.distributed as dist

        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    metrics = _summarise(sums.sum(0))
    for source, row in zip(sources, sums):
        if row[2] > 0:
            metrics.update({f"{name}/{source}": value for name, value in _summarise(row).items()})
    return metrics


def _summarise(row: torch.Tensor) -> dict[str, float]:
    loss, null_loss, one_shot, one_shot_null = (float(value) for value in row[:-1] / row[-1])
    return {
        "val_loss": loss,
        "val_null_loss": null_loss,
        "val_action_gain": null_loss - loss,
        "val_one_shot_loss": one_shot,
        "val_one_shot_null_loss": one_shot_null,
        "val_one_shot_gain": one_shot_null - one_shot,
        "val_samples": float(row[-1]),
    }


def format_validation(metrics: dict[str, float]) -> str:
    """A plain-text table: one row per source, then all sources pooled."""
    sources = sorted({key.split("/", 1)[1] for key in metrics if "/" in key})
    columns = ("loss", "null_loss", "action_gain", "one_shot_loss", "one_shot_null_loss", "one_shot_gain")
    header = ("loss", "null loss", "action gain", "t=1 loss", "t=1 null", "t=1 gain")
    lines = [f"{'source':<12} " + " ".join(f"{name:>11}" for name in header) + f" {'samples':>8}"]
    for source, suffix in [(s, f"/{s}") for s in sources] + [("pooled", "")]:
        values = " ".join(f"{metrics[f'val_{column}{suffix}']:>11.4f}" for column in columns)
        lines.append(f"{source:<12} {values} {int(metrics['val_samples' + suffix]):>8d}")
    return "\n".join(lines)
