"""Next-chunk flow-matching training of the Astra transformer.

One step: draw a batch (history chunk + target chunk + per-latent-frame actions), noise the target at a flow
time t, corrupt the history with independent noise with probability `noisy_memory_prob` (the model is told each
history frame's level through `history_timesteps`; inference uses clean history), null the target actions with
probability `action_dropout` (the same frames action-free guidance nulls), regress the velocity on the target
frames only, add the experts' load-balancing loss. A model that normalises its actions gets the per-column
statistics of the training batches before the first step. AdamW with warmup + cosine, gradient clipping, an fp32
EMA of the trainable weights, bf16 autocast over fp32 master weights on GPU, optional per-block gradient
checkpointing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from astra.actions.modalities import get_modality
from astra.config_fields import read_json_object
from astra.diffusion.flow import (
    add_noise,
    copy_anchor,
    copy_prior_velocity,
    flow_matching_loss,
    sample_timesteps,
    velocity_target,
)
from astra.diffusion.sampler import SamplerConfig, sample_chunk
from astra.errors import AstraError
from astra.files import atomic_write_text
from astra.model.action_experts import ActionInput
from astra.model.config import PRESETS as MODEL_PRESETS
from astra.model.config import AstraConfig
from astra.model.freeze import parameter_group
from astra.model.history import plan_history
from astra.train.batches import BatchSource, SyntheticBatches, TrainBatch, step_generator
from astra.train.checkpointing import (
    capture_rng_state,
    check_keys,
    check_trainable_keys,
    derived_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from astra.train.config import TrainConfig
from astra.train.distributed import DistInfo, all_reduce_mean, wrap_model
from astra.train.logging import TrainLogger
from astra.train.motion_fit import fit_motion_prior
from astra.train.validation import validation_batch_source, validation_losses

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)
NOISE_STREAM = 1  # generator stream of the per-step noise (stream 0 is the data)
ACTION_STATISTICS_BATCHES = 64  # batches the action normalisation statistics are taken from
# Model options a checkpoint trained without them can be carried into, exactly: switch -> the keys it adds
ADDITIONS = {"normalize_actions": ".normalizers.", "motion_prior": "motion_prior."}
# Model settings without weights of their own: a checkpoint continues under the training config's values.
WEIGHT_FREE = ("motion_prior_min_t", "trainable")  # e.g. a fine-tune of the action modules alone
# Model state taken from the training data, not trained (the action statistics, the fitted and frozen motion prior):
# saved with the trainable weights, so a resume continues with it even if the data changed in between.
DATA_DERIVED = tuple(ADDITIONS.values())
DERIVED_WHAT = "data-derived state (action statistics, motion prior)"


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def build_model_config(config: TrainConfig) -> AstraConfig:
    """The AstraConfig named by `config.model` (a preset or a config.json path) with `model_overrides`."""
    if config.model in MODEL_PRESETS:
        data = AstraConfig.from_preset(config.model).to_dict()
    elif Path(config.model).is_file():
        data = read_json_object(config.model, label=f"model config {config.model}", holding="AstraConfig settings")
        data = data.get("config", data)  # our checkpoints' config.json nests it under "config"
    else:
        raise AstraError(f"model {config.model!r} is neither a model preset ({', '.join(MODEL_PRESETS)}) nor a file")
    model_config = AstraConfig.from_dict({**data, **config.model_overrides})
    model_config.validate()
    return model_config


def check_model_settings(config: TrainConfig, model_config: AstraConfig) -> None:
    """The training settings that depend on the model's config, checked before setup rather than at the first step."""
    if not config.diffusion_forcing:
        return
    chunk = model_config.chunk_frames
    if config.target_frames % chunk:  # the target is split into causal chunks of chunk_frames, each its own noise level
        raise AstraError(
            f"diffusion_forcing needs target_frames to be a multiple of the model's chunk_frames ({chunk}), got "
            f"{config.target_frames}"
        )
    if model_config.history.compressed_2x or model_config.history.compressed_4x:
        raise AstraError(
            f"diffusion_forcing needs a history kept at full resolution, got compressed_2x="
            f"{model_config.history.compressed_2x}, compressed_4x={model_config.history.compressed_4x}"
        )
    if config.copy_prior and model_config.motion_prior and model_config.motion_prior_min_t > 0:
        # chunk_anchors restarts the motion at each chunk from where the chunk before ended, which the gate erases
        raise AstraError(
            "diffusion_forcing with the copy prior needs motion_prior_min_t = 0 (each target chunk's anchor motion "
            f"restarts at the chunk), got {model_config.motion_prior_min_t}"
        )


def build_model(
    config: TrainConfig,
    batches: BatchSource | None = None,
    derived: dict[str, torch.Tensor] | None = None,
    where: str = "",
) -> torch.nn.Module:
    """A fresh, Wan-initialised or checkpoint-initialised AstraTransformer with the freeze policy applied, in fp32.

    A model that normalises actions takes its statistics from `batches` unless its checkpoint already has them. A
    checkpoint of the same config without the function-preserving additions (ADDITIONS: normalised actions, the
    motion prior) is carried over exactly: statistics folded into its projectors, the motion prior at zero.
    `derived` is the data-derived state of the training checkpoint (`where`) a resume goes on from: taken whole
    instead of computed, since the resume would overwrite what the data gives now (and it takes minutes).
    """
    from astra.model.checkpoints import is_astra_checkpoint, load_astra, load_wan_transformer
    from astra.model.freeze import apply_freeze_policy
    from astra.model.transformer import AstraTransformer

    model_config = build_model_config(config)
    needs_statistics, keep_function = model_config.normalize_actions, False
    if config.init_from and is_astra_checkpoint(config.init_from):  # go on from our own weights (e.g. shipped ones)
        model, _ = load_astra(config.init_from, dtype=torch.float32)
        added = {name: False for name in ADDITIONS if getattr(model_config, name) and not getattr(model.config, name)}
        needs_statistics = needs_statistics and not model.config.normalize_actions
        # settings without weights of their own come from the training config, whatever the checkpoint's were
        model.config = model.config.replace(**{name: getattr(model_config, name) for name in WEIGHT_FREE})
        if added and model.config == model_config.replace(**added):
            older = model
            model = AstraTransformer(model_config)
            missing, unexpected = model.load_state_dict(older.state_dict(), strict=False)
            new_keys = tuple(ADDITIONS[name] for name in added)
            if unexpected or not all(any(new in key for new in new_keys) for key in missing):
                raise AstraError(
                    f"init_from {config.init_from}: cannot carry over (missing {missing}, unexpected {unexpected})"
                )
            keep_function = "normalize_actions" in added
        if model.config != model_config:
            differing = [f.name for f in dataclasses.fields(model_config)
                         if getattr(model.config, f.name) != getattr(model_config, f.name)]  # fmt: skip
            raise AstraError(
                f"init_from {config.init_from}: the checkpoint's model config differs from {config.model!r} "
                f"(+ model_overrides) in {', '.join(differing)}; train with --set model=<its config.json> to go on "
                "from it"
            )
    elif config.init_from:
        model = load_wan_transformer(config.init_from, config=model_config)
    else:
        torch.manual_seed(config.seed)
        model = AstraTransformer(model_config)
    if derived is not None:
        check_keys(data_derived_shapes(model), derived, where, DERIVED_WHAT)
        if needs_statistics:  # set as the run set them, so that frozen carried-over projectors are folded likewise
            prefix = "action_projectors.normalizers."
            statistics = {
                name: (derived[f"{prefix}{name}.mean"], derived[f"{prefix}{name}.std"])
                for name in model.action_projectors.normalizers
            }
            model.action_projectors.set_statistics(statistics, keep_function)
        model.load_state_dict(derived, strict=False)  # the fitted motion prior (and the statistics once more)
    elif needs_statistics:
        if batches is None:
            raise AstraError("a model that normalises actions needs training batches to take their statistics from")
        model.action_projectors.set_statistics(action_statistics(batches), keep_function)
    apply_freeze_policy(model, model_config)
    return model


def data_derived_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the model's data-derived state (DATA_DERIVED), which checkpoints hold beside the trainable
    weights; none of it trains (the statistics are buffers, the motion prior is frozen)."""
    state = model.state_dict()
    return {name: tuple(value.shape) for name, value in state.items() if any(tag in name for tag in DATA_DERIVED)}


def action_statistics(
    batches: BatchSource, num_batches: int = ACTION_STATISTICS_BATCHES
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-modality (mean, std) of the raw actions of the first `num_batches` batches of rank 0 (the same on every
    rank and on resume: batches are a pure function of the step). The first latent frame of a clip (no motion
    yet, its action is zero by definition) counts like any other."""
    rows: dict[str, list[torch.Tensor]] = {}
    for step in range(num_batches):
        batch = batches.batch(step, 0)
        for values, name in zip(batch.action_values, batch.modality):
            rows.setdefault(name, []).append(values[:, : get_modality(name).width].double())
    statistics = {}
    for name, parts in rows.items():
        values = torch.cat(parts)
        statistics[name] = (values.mean(0).float(), values.std(0, unbiased=False).float())
    return statistics


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Recompute each transformer block's activations in backward instead of storing them.

    Patches `block.forward` per instance (parameter names are unchanged) with non-reentrant
    torch.utils.checkpoint, which handles keyword arguments and frozen inputs. Returns the number of blocks.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise AstraError("gradient checkpointing needs a model with a `blocks` ModuleList")
    for block in blocks:
        block_forward = block.forward

        def checkpointed_forward(*args: Any, _forward=block_forward, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        block.forward = checkpointed_forward
    return len(blocks)


# ---------------------------------------------------------------------------------------------------------------
# The loss of one batch
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class StepOutput:
    loss: torch.Tensor  # what is backpropagated: flow loss + aux_loss_weight * aux loss
    sample_flow_loss: torch.Tensor  # [B] each sample's flow loss (their mean is the batch's)
    aux_loss: torch.Tensor
    expert_usage: torch.Tensor

    @property
    def flow_loss(self) -> torch.Tensor:
        return self.sample_flow_loss.mean()


def training_loss(
    model: torch.nn.Module,
    batch: TrainBatch,
    config: TrainConfig,
    generator: torch.Generator,
    model_config: AstraConfig | None = None,
    flow_time: float | None = None,
) -> StepOutput:
    """Flow-matching loss of the target chunk given (noisy) history and (possibly dropped) actions.

    All randomness comes from `generator` (CPU), so a step is reproducible from (seed, rank, step).
    With `config.diffusion_forcing` the batch is first re-split by `diffusion_forcing_split` (needs `model_config`).
    `flow_time` scores every target at that time instead of drawn ones (validation's one-shot error at t = 1).
    """
    if config.diffusion_forcing:
        if model_config is None:
            raise AstraError("diffusion forcing needs the model config (its history budget and chunk size)")
        batch = diffusion_forcing_split(batch, model_config, generator)
    target = batch.target_latents
    device = target.device
    batch_size, _, target_frames = target.shape[:3]
    draw = lambda *shape: torch.rand(shape, generator=generator).to(device)  # noqa: E731
    normal = lambda shape: torch.randn(shape, generator=generator).to(device)  # noqa: E731

    # one flow time per sample, or per target chunk with diffusion forcing (each chunk its own noise level)
    chunk_frames = model_config.chunk_frames if config.diffusion_forcing else target_frames
    if flow_time is None:
        timesteps = sample_timesteps(batch_size * (target_frames // chunk_frames), config.flow, generator)
    else:
        timesteps = torch.full((batch_size * (target_frames // chunk_frames),), float(flow_time))
    timesteps = timesteps.to(device).view(batch_size, -1).repeat_interleave(chunk_frames, dim=1)
    noise = normal(target.shape)
    noisy_target = add_noise(target, noise, timesteps)

    history, history_timesteps, history_frames = batch.history_latents, None, 0
    if history is not None and config.self_history_prob > 0:
        history = self_generated_history(model, batch, config, generator)
    if history is not None and config.faded_memory_prob > 0:
        history = faded_history(history, config, generator)
    uncorrupted_history = history
    if history is not None:
        history_frames = history.shape[2]
        low, high = config.noisy_memory_range
        corrupted = draw(batch_size) < config.noisy_memory_prob
        history_level = torch.where(corrupted, low + (high - low) * draw(batch_size), torch.zeros(batch_size, device=device))
        history_timesteps = history_level[:, None].repeat(1, history_frames)
        if config.clean_first_memory:
            history_timesteps[:, 0] = 0.0
        history = add_noise(history, normal(history.shape), history_timesteps)

    null = torch.zeros(batch_size, history_frames + target_frames, dtype=torch.bool, device=device)
    null[:, history_frames:] = (draw(batch_size) < config.action_dropout)[:, None]
    actions = ActionInput(batch.action_values, batch.modality, null)

    out = model(
        noisy_target,
        timesteps,
        history_latents=history,
        history_timesteps=history_timesteps,
        actions=actions,
        text=batch.text,
        causal_target=config.diffusion_forcing,
    )
    velocity = out.velocity.float()
    if config.copy_prior:  # each chunk anchored where a rollout anchors it (moved by the motion prior)
        anchor_source = uncorrupted_history if config.clean_anchor else history
        anchors = anchor_source[:, :, -1:]  # the first chunk's: the newest history frame
        if target_frames > chunk_frames:
            # Diffusion forcing: chunk k > 0 at chunk k - 1's last frame as teacher forcing gives it, clean (x0): a
            # rollout anchors each chunk at the finished chunk before, never at a partly denoised one like the noisy
            # chunk the model attends to here. Not noised to the memory level even without clean_anchor: the model
            # does not see that noised frame, so it could not cancel the noise as it does for the newest history frame.
            anchors = torch.cat((anchors, target[:, :, chunk_frames - 1 : -1 : chunk_frames]), dim=2)
        anchor = chunk_anchors(anchors, out.motion, chunk_frames)
        velocity = velocity + copy_prior_velocity(noisy_target, timesteps, anchor, config.copy_prior_sigma)
    element_weight = None
    if config.change_weight > 0 and batch.history_latents is not None:
        element_weight = change_weights(target, batch.history_latents[:, :, -1:], config.change_weight)
    sample_flow_loss = flow_matching_loss(
        velocity,
        velocity_target(target, noise),
        timesteps,
        config.flow.loss_weighting,
        per_sample=True,
        element_weight=element_weight,
    )
    aux_loss = out.aux_loss.float()
    loss = sample_flow_loss.mean() + config.aux_loss_weight * aux_loss
    return StepOutput(loss, sample_flow_loss, aux_loss, out.expert_usage.detach())


def chunk_anchors(anchors: torch.Tensor, motion: torch.Tensor | None, chunk_frames: int) -> torch.Tensor:
    """The copy prior's anchor of every target frame `[B, C, K * chunk_frames, H, W]`: chunk k's from `anchors[:, :,
    k]` (`[B, C, K, H, W]`, one frame per target chunk), moved by the motion prior's output (`AstraOutput.motion`).

    The model sums the motion over all its target frames; a rollout samples one chunk per call, so here the motion
    restarts at each chunk: chunk k moves from its own anchor by its own frames' actions only.
    """
    batch, channels, chunks, height, width = anchors.shape
    if motion is None:
        return anchors.repeat_interleave(chunk_frames, dim=2)
    motion = motion.unflatten(1, (chunks, chunk_frames))
    ends = motion[:, :, -1:]  # the summed motion at each chunk's last frame
    motion = motion - torch.cat((torch.zeros_like(ends[:, :1]), ends[:, :-1]), dim=1)
    per_chunk = anchors.transpose(1, 2).reshape(batch * chunks, channels, 1, height, width)
    moved = copy_anchor(per_chunk, motion.flatten(0, 1))  # [B * K, C, chunk_frames, H, W]
    return moved.unflatten(0, (batch, chunks)).transpose(1, 2).flatten(2, 3)


def change_weights(target: torch.Tensor, newest_history: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-element loss weights `1 + strength * change / mean change`, normalised to mean 1 per sample, where change
    is each target element's channel-mean distance from the newest clean history frame (`[B, C, 1, H, W]`): the
    elements that move weigh more, the static ones less. Returns `[B, 1, T, H, W]`."""
    change = (target.float() - newest_history.float()).abs().mean(dim=1, keepdim=True)
    scale = change.flatten(1).mean(1).clamp_min(torch.finfo(change.dtype).tiny).view(-1, 1, 1, 1, 1)
    weight = 1.0 + strength * change / scale
    return weight / weight.flatten(1).mean(1).view(-1, 1, 1, 1, 1)


def self_generated_history(
    model: torch.nn.Module, batch: TrainBatch, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """The batch's history with, for a `self_history_prob` share of the samples, its newest chunk (as many frames as
    the target) replaced by the model's own sample of it given the frames before and the actions, drawn as a
    rollout draws it (`self_history_steps` Euler steps, guidance `self_history_guidance`, the copy prior).

    Why: at inference the memory is the model's own output, and small errors there (a brighter wall, a blurred edge)
    compound chunk by chunk (held turns in doom saturate to white within ~20 chunks, docs/results.md). Trained on its
    own samples as memory with the real next chunk as target, the model learns to pull them back. One generated chunk,
    no gradient through it: a cheap one-step version of rollout training. Histories with no real frame before their
    newest chunk are left as they are.
    """
    history, chunk = batch.history_latents, batch.target_latents.shape[2]
    batch_size, history_frames = history.shape[0], history.shape[2]
    chosen = torch.rand(batch_size, generator=generator) < config.self_history_prob
    if history_frames <= chunk or not bool(chosen.any()):
        return history
    rows = chosen.nonzero().flatten().tolist()
    index = torch.tensor(rows, device=history.device)
    past = history[index, :, : history_frames - chunk]
    actions = ActionInput(batch.action_values[index, :history_frames], tuple(batch.modality[row] for row in rows))
    noise = torch.randn(past.shape[:2] + (chunk,) + past.shape[3:], generator=generator).to(history.device, history.dtype)
    sampler = SamplerConfig(
        num_steps=config.self_history_steps,
        shift=config.flow.shift,
        action_guidance=config.self_history_guidance,
        copy_prior_sigma=config.copy_prior_sigma if config.copy_prior else None,
    )
    text = None if batch.text is None else batch.text[index]
    generated = sample_chunk(model, noise, history_latents=past, actions=actions, text=text, config=sampler)
    history = history.clone()
    history[index, :, history_frames - chunk :] = generated.to(history.dtype)
    return history


def faded_history(history: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The history with, for a `faded_memory_prob` share of the samples, every frame but the oldest shrunk toward its
    per-channel spatial mean: contrast c ~ U(faded_memory_range), frame -> mean + c * (frame - mean).

    Why: long rollouts fade to a flat field (docs/results.md); each chunk keeps a little less contrast than its memory
    and the copy prior hands the loss on. Faded memory with the real target teaches the network to put it back, using
    the oldest frame (the clean start frame at inference, always kept in memory) as the reference for the level.
    """
    batch_size, history_frames = history.shape[0], history.shape[2]
    chosen = torch.rand(batch_size, generator=generator) < config.faded_memory_prob
    low, high = config.faded_memory_range
    contrast = torch.where(chosen, low + (high - low) * torch.rand(batch_size, generator=generator), torch.ones(()))
    if history_frames < 2 or not bool(chosen.any()):
        return history
    contrast = contrast.to(history.device, history.dtype).view(batch_size, 1, 1, 1, 1)
    recent = history[:, :, 1:]
    mean = recent.mean(dim=(3, 4), keepdim=True)
    return torch.cat([history[:, :, :1], mean + contrast * (recent - mean)], dim=2)


def diffusion_forcing_split(batch: TrainBatch, model_config: AstraConfig, generator: torch.Generator) -> TrainBatch:
    """Re-split a (history, one target chunk) batch into (memory, several causal target chunks).

    The window is what the model keeps of the history (the first frame + the newest `history.full` frames, as at
    inference) plus the target; a split drawn uniformly among the window's chunk boundaries after the first frame
    decides which frames are memory (noised as history) and which are targets. The first target is exactly the
    plain recipe's target; the later ones attend to it and to each other causally at their own noise levels
    (diffusion forcing), so one sequence of the same length supervises on average half the window instead of one
    chunk.
    """
    budget, chunk = model_config.history, model_config.chunk_frames
    if budget.compressed_2x or budget.compressed_4x:
        raise AstraError("diffusion forcing needs a history kept at full resolution (no compressed_2x/4x frames)")
    if batch.history_latents is None:
        return batch
    history_frames = batch.history_latents.shape[2]
    kept = sorted(frame for group in plan_history(history_frames, budget) for frame in group.frames)
    window = torch.cat((batch.history_latents[:, :, kept], batch.target_latents), dim=2)
    actions = torch.cat((batch.action_values[:, kept], batch.action_values[:, history_frames:]), dim=1)
    boundaries = list(range(window.shape[2] - batch.target_latents.shape[2], 0, -chunk))  # >= 1 memory frame
    split = boundaries[int(torch.randint(len(boundaries), (), generator=generator))]
    return TrainBatch(window[:, :, :split], window[:, :, split:], actions, batch.modality, batch.text, batch.source)


# ---------------------------------------------------------------------------------------------------------------
# Optimiser pieces
# ---------------------------------------------------------------------------------------------------------------


ACTION_LR_GROUPS = ("action_experts", "action_projectors")  # what `action_lr_scale` speeds up


def optimizer_groups(trainable: list[tuple[str, torch.nn.Parameter]], config: TrainConfig) -> list[dict[str, Any]]:
    """One AdamW group, or two when `action_lr_scale` != 1: the action modules at lr * scale, the rest at lr.

    Why: the action experts start from scratch inside a pretrained (or long-trained) network and carry a small share
    of the loss, so at the backbone's learning rate they move slowly (validation: the loss with actions is only
    ~0.7 % below the loss without them after 5,300 steps). A single group keeps older checkpoints resumable.
    """
    if config.action_lr_scale == 1.0:
        return [{"params": [p for _, p in trainable]}]
    action = [p for name, p in trainable if parameter_group(name) in ACTION_LR_GROUPS]
    rest = [p for name, p in trainable if parameter_group(name) not in ACTION_LR_GROUPS]
    if not action:
        raise AstraError("action_lr_scale is set but no action expert or projector parameter trains")
    action_group = {"params": action, "lr": config.lr * config.action_lr_scale}
    return [{"params": rest}, action_group] if rest else [action_group]  # group 0's lr is the one logged


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class EMA:
    """fp32 exponential moving average of the trainable parameters (with the usual warm-up of the decay)."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = decay
        self.params = dict(named_params)
        self.shadow = {name: p.detach().float().clone() for name, p in named_params}

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1.0 - decay)

    @contextmanager
    @torch.no_grad()
    def applied(self) -> Iterator[None]:
        """The averaged weights in place of the trained ones for the duration (validation scores what is
        exported); the trained weights are put back after."""
        trained = {name: param.detach().clone() for name, param in self.params.items()}
        for name, param in self.params.items():
            param.copy_(self.shadow[name])
        try:
            yield
        finally:
            for name, param in self.params.items():
                param.copy_(trained[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: _full(t).cpu() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], where: str) -> None:
        if set(state) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(state)), sorted(set(state) - set(self.shadow))
            raise AstraError(f"{where}: EMA weights do not match the trainable set (missing {missing[:20]}, unexpected {extra[:20]})")
        for name, tensor in state.items():
            _copy_full_into(self.shadow[name], tensor)


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor (FSDP) gathered to a plain tensor; plain tensors unchanged."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _copy_full_into(destination: torch.Tensor, full: torch.Tensor) -> None:
    if hasattr(destination, "device_mesh"):  # DTensor shard: keep only this rank's part
        from torch.distributed.tensor import distribute_tensor

        full = distribute_tensor(full.to(destination.device), destination.device_mesh, destination.placements)
    destination.copy_(full)


def git_revision() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------------------------


def make_batch_source(config: TrainConfig, model_config: AstraConfig) -> BatchSource:
    target_frames = config.target_frames or model_config.chunk_frames
    if config.data == "synthetic":
        return SyntheticBatches(
            model_config.in_channels, config.latent_size, config.history_range, target_frames, config.batch_size, config.seed
        )
    from astra.train.latent_batches import LatentBatches

    return LatentBatches(config, target_frames)


class Trainer:
    """Builds model, optimiser, EMA, logs; `fit()` trains to `config.steps`, checkpointing on the way.

    `resume`: the caller goes on from the newest checkpoint in `out_dir` (`fit(resume=True)`, `resume()`), so setup
    takes the data-derived state from it rather than computing what the resume would overwrite. Every rank reads the
    same file, as the resume does.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        info: DistInfo = DistInfo(),
        batches: BatchSource | None = None,
        progress: bool = True,
        resume: bool = False,
    ):
        config.validate()
        self.config, self.out_dir, self.info, self.progress = config, Path(out_dir), info, progress
        self.model_config = build_model_config(config)
        check_model_settings(config, self.model_config)
        self.batches = batches or make_batch_source(config, self.model_config)
        # built before the model, so a dataset without held-out clips is named before minutes of setup
        self.validation_batches = validation_batch_source(config, self.model_config) if config.val_every else None
        resumed = latest_checkpoint(self.out_dir) if resume else None
        # None for a fresh run and for a checkpoint saved before it was (computed then, and resume() warns)
        derived = derived_state(resumed) if resumed is not None else None
        model = build_model(config, self.batches, derived, str(resumed)).to(info.device)
        # fitted before the EMA and the DDP/FSDP wrap; frozen after: the flow loss's gradient (the network co-adapted
        # to the unmoved anchor) shrank a fitted prior's motion 1.7x in 600 steps
        if config.motion_fit_batches and derived is None:
            errors = fit_motion_prior(
                model, self.batches, config.motion_fit_batches, config.motion_fit_iterations, config.action_dropout,
                config.seed, config.motion_fit_radius,
            )
            if info.is_main:
                changes = (f"{name} {before:.4f} -> {after:.4f}" for name, (before, after) in errors.items())
                print("motion prior fitted; copy anchor error before -> after: " + ", ".join(changes))
        if model.motion_prior is not None:  # set by the fit above or loaded with init_from, never by the flow loss
            model.motion_prior.requires_grad_(False)
        if config.grad_checkpointing:
            enable_gradient_checkpointing(model)
        self.trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not self.trainable:
            raise AstraError("the freeze policy leaves no trainable parameter")
        self.derived = data_derived_shapes(model)  # what the checkpoints hold besides the trainable weights
        self.model = wrap_model(model, config.parallel, info)
        self.trainable = [(n.removeprefix("module."), p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            optimizer_groups(self.trainable, config), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config.warmup_steps, config.steps, config.min_lr_ratio)
        )
        self.ema = EMA(self.trainable, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        use_bf16 = config.mixed_precision == "bf16" or (config.mixed_precision == "auto" and info.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

    # --- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        trainable_names = {name for name, _ in self.trainable}
        weights = get_model_state_dict(self.model, options=FULL_STATE)
        return {
            "step": self.step,
            "model": {k: v for k, v in weights.items() if k in trainable_names},
            "derived": {k: v for k, v in weights.items() if k in self.derived},
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=FULL_STATE),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "config": self.config.to_dict(),
        }

    def save(self) -> Path | None:
        state = self.state_dict()  # collective under FSDP: every rank takes part
        if not self.info.is_main:
            return None
        return save_checkpoint(self.out_dir, self.step, state, keep=self.config.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest checkpoint in out_dir (if any); returns whether one was found."""
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return False
        state = load_checkpoint(path)
        check_trainable_keys(self.model, state["model"], str(path))
        weights = dict(state["model"])
        if "derived" in state:  # what the run took from its data, not what the data holds now
            check_keys(self.derived, state["derived"], str(path), DERIVED_WHAT)
            weights.update(state["derived"])
        elif self.derived and self.info.is_main:
            warnings.warn(
                f"{path}: an older checkpoint without the data-derived state (action statistics, fitted motion "
                f"prior); going on with those computed now from {self.config.data}, which differ from the run's if "
                f"its data changed",
                stacklevel=2,
            )
        set_model_state_dict(self.model, weights, options=StateDictOptions(full_state_dict=True, strict=False))
        # strict=False: AdamW has no state yet for experts the router never chose; the weights were checked above
        set_optimizer_state_dict(
            self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True, strict=False)
        )
        for name, param in self.trainable:  # the loader initialises missing state at step 1: undo for exactness
            if name not in state["optimizer"]["state"]:
                self.optimizer.state.pop(param, None)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if state["ema"] is None:
                raise AstraError(f"{path}: checkpoint has no EMA but ema_decay > 0")
            self.ema.load_state_dict(state["ema"], str(path))
        restore_rng_state(state["rng"])
        self.step = int(state["step"])
        return True

    # --- training ----------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        self.model.train()
        batch = self.batches.batch(self.step, self.info.rank).to(self.info.device)
        generator = step_generator(self.config.seed, self.info.rank, self.step, stream=NOISE_STREAM)
        with torch.autocast(self.info.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            out = training_loss(self.model, batch, self.config, generator, self.model_config)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], self.config.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.step)
        metrics = {
            "loss": all_reduce_mean(out.loss.detach(), self.info).item(),
            "flow_loss": all_reduce_mean(out.flow_loss.detach(), self.info).item(),
            "aux_loss": all_reduce_mean(out.aux_loss.detach(), self.info).item(),
            "grad_norm": float(_full(grad_norm)),
            "lr": lr,
        }
        usage = all_reduce_mean(out.expert_usage.float(), self.info)
        metrics.update({f"usage_{i}": float(u) for i, u in enumerate(usage)})
        return metrics

    def validate(self) -> dict[str, float]:
        """Held-out validation of the weights an export would write (the EMA's when there is one); every rank
        calls it. Uses the config's validation batches, or builds them for a trainer made without (val_every=0)."""
        if self.validation_batches is None:
            self.validation_batches = validation_batch_source(self.config, self.model_config)
        with self.ema.applied() if self.ema is not None else nullcontext():
            return validation_losses(
                self.model, self.validation_batches, self.config, self.model_config, self.info, self.autocast_dtype
            )

    def _validate_and_log(self, logger: TrainLogger) -> str:
        validation = self.validate()
        logger.log(self.step, validation, kind="val")
        return f"{validation['val_loss']:.4f}"

    def fit(self, resume: bool = False, stop_after: int | None = None) -> list[dict[str, float]]:
        """Train to `config.steps` (or stop after step `stop_after`: an interrupted run, for tests; or once
        `config.max_minutes` have passed).

        Returns the logged metric rows of this call. Saves a checkpoint every `save_every` steps and at the end.
        """
        if resume and not self.resume() and self.info.is_main:  # the build script resumes its first launch too
            print(f"--resume: no checkpoint in {self.out_dir} yet; starting a new run there", file=sys.stderr)
        existing = latest_checkpoint(self.out_dir)
        if self.step == 0 and existing is not None:  # starting over would overwrite that run's checkpoints and metrics
            raise AstraError(
                f"{self.out_dir} already holds a training run ({existing.name}); pass --resume to continue it "
                f"or choose another --out"
            )
        if self.info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "train_config.json", self.config.to_json())  # --resume reads it
        logger = TrainLogger(self.out_dir, resume_step=self.step, enabled=self.info.is_main)
        last = self.config.steps if stop_after is None else min(stop_after, self.config.steps)
        rows: list[dict[str, float]] = []
        bar = tqdm(total=self.config.steps, initial=self.step, desc="train", disable=not (self.progress and self.info.is_main))
        samples_per_step = self.config.batch_size * self.info.world_size
        validation_due = lambda: self.config.val_every and (self.step % self.config.val_every == 0 or self.step == last)  # noqa: E731
        shown: dict[str, str] = {}  # the progress bar's postfix: loss, samples/s and the newest validation loss
        started = time.monotonic()
        try:
            if self.step == 0 and validation_due():  # the starting point of the validation curve
                shown["val_loss"] = self._validate_and_log(logger)
            while self.step < last:
                start = time.perf_counter()
                metrics = self.train_step()
                metrics["samples_per_s"] = samples_per_step / (time.perf_counter() - start)
                time_is_up = self.step < last and self._time_is_up(started)
                if self.step % self.config.log_every == 0 or self.step == last or time_is_up:
                    logger.log(self.step, metrics)
                    rows.append({"step": self.step, **metrics})
                if validation_due():
                    shown["val_loss"] = self._validate_and_log(logger)
                shown.update(loss=f"{metrics['loss']:.4f}", samples_s=f"{metrics['samples_per_s']:.1f}")
                bar.update(1)
                bar.set_postfix(shown)
                if time_is_up and self.config.val_every and not validation_due():  # the curve's last point
                    shown["val_loss"] = self._validate_and_log(logger)
                if self.step % self.config.save_every == 0 or self.step == last or time_is_up:
                    self.save()
                if time_is_up:
                    if self.info.is_main:
                        print(f"max_minutes ({self.config.max_minutes:g}) reached: stopped at step {self.step} of "
                              f"{self.config.steps}", file=sys.stderr)
                    break
        finally:
            bar.close()
            logger.close()
        return rows

    def _time_is_up(self, started: float) -> bool:
        """Whether `max_minutes` have passed since `started`; rank 0's clock decides for all ranks, so that every
        rank stops after the same step (a collective would hang otherwise)."""
        if not self.config.max_minutes:
            return False
        up = torch.tensor(float(time.monotonic() - started >= 60 * self.config.max_minutes))
        if self.info.distributed:
            import torch.distributed as dist

            up = up.to(self.info.device)
            dist.broadcast(up, src=0)
        return bool(up.item())

    # --- export -------------------------------------------------------------------------------------------
    def _data_index(self) -> dict:
        index = Path(self.config.data) / "index.json"
        try:
            return json.loads(index.read_text())
        except (OSError, ValueError):
            return {}

    def data_vae(self) -> str | None:
        """The VAE the training latents were encoded with (rollout decodes with the same one)."""
        return self._data_index().get("vae")

    def action_meta(self) -> dict[str, dict[str, float]]:
        """Per source (world), the action scales used at encode time, so rollout converts actions identically."""
        meta: dict[str, dict[str, float]] = {}
        for entry in self._data_index().get("entries", []):
            if "scales" in entry:
                meta.setdefault(entry["source"], entry["scales"])
        return meta

    def sampling_defaults(self) -> dict[str, float]:
        """The rollout settings the exported model plays with: those the config's `sampling` names; else, when
        training went on from one of our checkpoints, that checkpoint's (chosen for it, e.g. the shipped history
        noise); else the RolloutConfig defaults, and memory noised to the lowest level training noised it at (0 =
        clean when training never did), so the model's own frames enter its memory the way noised real frames did."""
        from astra.model.checkpoints import astra_metadata, is_astra_checkpoint
        from astra.rollout.session import RolloutConfig

        defaults = {
            **RolloutConfig().sampling(),
            "history_noise": self.config.noisy_memory_range[0] if self.config.noisy_memory_prob > 0 else 0.0,
        }
        if self.config.init_from and is_astra_checkpoint(self.config.init_from):
            inherited = astra_metadata(self.config.init_from).get("sampling") or {}
            defaults.update({key: inherited[key] for key in defaults if key in inherited})
        return defaults | self.config.sampling

    def export(self, directory: str | Path | None = None, use_ema: bool = True) -> Path | None:
        """Write the model (EMA weights for the trainable set) with save_astra: model.safetensors + config.json."""
        from astra.model.checkpoints import save_astra
        from astra.model.transformer import AstraTransformer

        weights = get_model_state_dict(self.model, options=FULL_STATE)  # collective under FSDP
        ema = self.ema.state_dict() if (self.ema is not None and use_ema) else {}
        if not self.info.is_main:
            return None
        export_model = AstraTransformer(self.model_config)
        export_model.load_state_dict({**weights, **ema}, strict=True)
        metadata = {
            "vae": self.data_vae(),
            "action_meta": self.action_meta(),
            "sampling": self.sampling_defaults(),
            "train_config": self.config.to_dict(),
            "data": {"source": self.config.data, "world_weights": self.config.world_weights},
            "step": self.step,
            "weights": "ema" if ema else "raw",
            "copy_prior_sigma": self.config.copy_prior_sigma if self.config.copy_prior else None,
            "clean_anchor": self.config.clean_anchor,
            "git_revision": git_revision(),
        }
        return save_astra(export_model, directory or self.out_dir / "export", metadata)
