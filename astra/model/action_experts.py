"""Mixture of Action Experts (MoAE): per-modality projectors into a shared action space, then per-block experts.

Pipeline per latent frame: raw action (modality width) -> per-column standardisation (`ActionNormalizer`, when
config.normalize_actions) -> `ActionProjectors` (Linear to `action_space_dim`, or the learned null action) ->
append the history bit (1 history, 0 target) -> per block `ActionExperts`: a router picks top-k experts, only
those run, their outputs are summed with the router weights -> an embedding of width `dim` added to the
self-attention input of the tokens of that frame. The last layer of every expert starts at zero, so a
fresh Astra on Wan weights computes exactly Wan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from astra.actions.modalities import get_modality
from astra.model.config import AstraConfig


@dataclass
class ActionInput:
    """One action vector per latent frame.

    values: [B, F, max_width] float; sample b uses the first `width(modality[b])` columns, the rest must be 0.
    modality: one modality name per sample.
    null: [B, F] bool or None; True frames use the learned null action (action dropout, action-free guidance).
    """

    values: torch.Tensor
    modality: tuple[str, ...]
    null: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return self.values.shape[1]

    def frames(self, start: int, stop: int) -> "ActionInput":
        """The actions of latent frames [start, stop) (e.g. the chunk being streamed)."""
        null = None if self.null is None else self.null[:, start:stop]
        return ActionInput(self.values[:, start:stop], self.modality, null)

    def to(self, device: torch.device) -> "ActionInput":
        """The same actions on `device`: callers build them on the CPU for a model that may live elsewhere."""
        null = None if self.null is None else self.null.to(device)
        return ActionInput(self.values.to(device), self.modality, null)


def validate_action_input(actions: ActionInput, batch_size: int, num_frames: int, known: tuple[str, ...]) -> None:
    """Raise ValueError naming the sample/frame/column when `actions` does not fit the model's input."""
    values = actions.values
    if not isinstance(values, torch.Tensor) or values.ndim != 3:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"actions.values must be a tensor [B, F, max_width], got {shape}")
    if values.shape[0] != batch_size or values.shape[1] != num_frames:
        raise ValueError(
            f"actions.values has shape {tuple(values.shape)} but the model input needs "
            f"[B={batch_size}, F={num_frames}, max_width] (one action per latent frame)"
        )
    if len(actions.modality) != batch_size:
        raise ValueError(f"actions.modality has {len(actions.modality)} entries for a batch of {batch_size}")
    for b, name in enumerate(actions.modality):
        width = get_modality(name).width
        if name not in known:
            raise ValueError(f"actions.modality[{b}] = {name!r} has no projector; this model knows {known}")
        if values.shape[2] < width:
            raise ValueError(f"actions.values has {values.shape[2]} columns; modality {name!r} needs {width}")
        bad = ~torch.isfinite(values[b])
        if bad.any():
            frame, column = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"actions.values: non-finite value at sample {b}, frame {frame}, column {column}")
        padding = values[b, :, width:]
        if padding.numel() and bool((padding != 0).any()):
            frame, column = (int(i) for i in padding.nonzero()[0])
            raise ValueError(
                f"actions.values: sample {b} ({name!r}, width {width}) has a non-zero value in padding column "
                f"{width + column} at frame {frame}; columns past the modality's width must be 0"
            )
    if actions.null is not None and (actions.null.dtype != torch.bool or actions.null.shape != values.shape[:2]):
        raise ValueError(
            f"actions.null must be a bool tensor of shape {tuple(values.shape[:2])}, "
            f"got {actions.null.dtype} {tuple(actions.null.shape)}"
        )


ACTION_STD_FLOOR = 1e-2  # a column that (almost) never moves is not blown up into noise


class ActionNormalizer(nn.Module):
    """(action - mean) / std per column, with the training data's statistics kept as buffers in the checkpoint.

    Why: the columns of one modality differ in scale by 100x (a camera turn is a quaternion component of ~0.02, a
    translation ~2); a Linear with AdamW moves every weight by ~lr per step, so a tiny column stays unread for
    tens of thousands of steps. Standardised, every column is heard from the start.
    """

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std


# A standardised action beyond this many training standard deviations is input the model never saw (the shipped
# small model's training actions stay under 6 in most columns; its rarest, a car's pitch on a bump, reaches 27).
UNUSUAL_ACTION_SIGMAS = 10.0


@dataclass(frozen=True)
class UnusualAction:
    """A column of requested actions far outside the training data, with the value furthest out."""

    column: str
    value: float
    mean: float
    std: float

    @property
    def sigmas(self) -> float:
        return abs(self.value - self.mean) / self.std

    def describe(self, modality: str) -> str:
        if self.std <= ACTION_STD_FLOOR:
            where = f"a column the model's training actions never moved from {self.mean:.3g}"
        else:
            where = f"{self.sigmas:.0f} standard deviations from the training actions' mean {self.mean:.3g}"
        return f"{modality} action {self.column} = {self.value:.3g} lies {where}; expect output unrelated to the action"


def unusual_actions(normalizers: nn.ModuleDict | None, modality: str, values: np.ndarray) -> list[UnusualAction]:
    """Columns of per-latent-frame actions [F, width] beyond UNUSUAL_ACTION_SIGMAS (none without normalizers,
    whose model keeps no statistics). Why: a value the data never reached (a mouse delta in the wrong unit, a
    column the training worlds never moved) gives output that looks like a broken model rather than bad input."""
    if normalizers is None or modality not in normalizers:
        return []
    # via float64 in torch: numpy has no bfloat16, the dtype of a model cast to bf16
    mean = normalizers[modality].mean.detach().cpu().double().numpy()
    std = normalizers[modality].std.detach().cpu().double().numpy()
    values = np.asarray(values, dtype=np.float64).reshape(-1, mean.shape[0])
    if len(values) == 0:
        return []
    furthest = np.abs(values - mean).argmax(axis=0)
    columns = get_modality(modality).columns
    found = []
    for index, row in enumerate(furthest):
        value = values[row, index]
        if abs(value - mean[index]) > UNUSUAL_ACTION_SIGMAS * std[index]:
            found.append(UnusualAction(columns[index], float(value), float(mean[index]), float(std[index])))
    return found


def standardised_by_modality(actions: ActionInput, normalizers: nn.ModuleDict | None):
    """Yield (modality, sample rows, their actions [rows, F, width] as float, standardised when `normalizers`)."""
    for name in sorted(set(actions.modality)):
        rows = [b for b, m in enumerate(actions.modality) if m == name]
        values = actions.values[rows, :, : get_modality(name).width].float()
        yield name, rows, normalizers[name](values) if normalizers is not None else values


class ActionProjectors(nn.Module):
    """Per-modality Linear(width -> action_space_dim) plus a learned null action; appends the history bit."""

    def __init__(self, config: AstraConfig):
        super().__init__()
        self.modalities = tuple(config.modalities)
        self.projectors = nn.ModuleDict(
            {name: nn.Linear(get_modality(name).width, config.action_space_dim) for name in self.modalities}
        )
        self.null_action = nn.Parameter(torch.zeros(config.action_space_dim))
        self.normalizers = (
            nn.ModuleDict({name: ActionNormalizer(get_modality(name).width) for name in self.modalities})
            if config.normalize_actions
            else None
        )

    @torch.no_grad()
    def set_statistics(self, statistics: dict[str, tuple[torch.Tensor, torch.Tensor]], keep_function: bool) -> None:
        """Store per-modality (mean, std) of raw actions (std floored at ACTION_STD_FLOOR).

        keep_function: the projectors were trained on raw actions (a checkpoint from before normalisation): fold the
        statistics into their weights, W' = W diag(std), b' = b + W mean, so the model computes exactly what it did.
        """
        if self.normalizers is None:
            raise ValueError("this model does not normalise actions (config.normalize_actions=False)")
        for name, (mean, std) in statistics.items():
            if name not in self.normalizers:
                raise ValueError(f"action statistics for modality {name!r}, which this model has no projector for")
            normalizer, projector = self.normalizers[name], self.projectors[name]
            if mean.shape != normalizer.mean.shape or std.shape != normalizer.std.shape:
                raise ValueError(f"action statistics for {name!r} must have shape {tuple(normalizer.mean.shape)}")
            std = std.clamp_min(ACTION_STD_FLOOR)
            if keep_function:
                projector.bias += projector.weight @ mean.to(projector.weight)
                projector.weight *= std.to(projector.weight)
            normalizer.mean.copy_(mean)
            normalizer.std.copy_(std)

    def forward(self, actions: ActionInput, is_history: torch.Tensor) -> torch.Tensor:
        """[B, F, max_width] raw actions + is_history [F] bool -> features [B, F, action_space_dim + 1]."""
        validate_action_input(actions, actions.values.shape[0], is_history.shape[0], self.modalities)
        batch_size, num_frames = actions.values.shape[:2]
        weight = self.null_action
        actions = actions.to(weight.device)
        projected = weight.new_zeros(batch_size, num_frames, weight.shape[0])
        for name, rows, values in standardised_by_modality(actions, self.normalizers):
            projected[rows] = self.projectors[name](values.to(weight.dtype)).to(projected.dtype)  # bf16 under autocast
        if actions.null is not None:
            projected = torch.where(actions.null[..., None], self.null_action.expand_as(projected), projected)
        history_bit = is_history.to(projected.dtype)[None, :, None].expand(batch_size, num_frames, 1)
        return torch.cat((projected, history_bit), dim=-1)


@dataclass
class ExpertOutput:
    embedding: torch.Tensor  # [B, F, dim] action embedding of every frame
    aux_loss: torch.Tensor  # scalar Switch-Transformer load-balancing loss (0 with fixed routing)
    usage: torch.Tensor  # [num_experts] fraction of routed frames per expert


class ActionExperts(nn.Module):
    """One block's experts. `expert_hidden_dim == 0`: each expert is one Linear (`experts.K.0`, the authors'
    layout); otherwise Linear -> GELU -> Linear (`experts.K.0`, `experts.K.2`). Routing is learned (softmax
    router, top-k, only chosen experts computed) or fixed by modality (no router parameters)."""

    def __init__(self, config: AstraConfig):
        super().__init__()
        features, hidden = config.action_space_dim + 1, config.expert_hidden_dim
        self.top_k = config.top_k
        self.router = nn.Linear(features, config.num_experts) if config.expert_routing == "learned" else None
        if hidden:
            make = lambda: nn.Sequential(
                nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, config.dim)
            )  # noqa: E731
        else:
            make = lambda: nn.Sequential(nn.Linear(features, config.dim))  # noqa: E731
        self.experts = nn.ModuleList(make() for _ in range(config.num_experts))

    def reset_last_layers(self) -> None:
        """Zero the last layer of every expert: at init the action embedding is exactly 0."""
        for expert in self.experts:
            nn.init.zeros_(expert[-1].weight)
            nn.init.zeros_(expert[-1].bias)

    def forward(self, features: torch.Tensor, fixed_expert: torch.Tensor | None = None) -> ExpertOutput:
        """features [B, F, A+1]; fixed_expert [B] long (required with fixed routing, the expert of each sample)."""
        batch_size, num_frames, _ = features.shape
        num_experts = len(self.experts)
        flat = features.flatten(0, 1)
        if self.router is None:
            if fixed_expert is None:
                raise ValueError("fixed expert routing needs the expert index of every sample")
            chosen = fixed_expert.repeat_interleave(num_frames)[:, None]
            gates = flat.new_ones(chosen.shape)
        else:
            probs = F.softmax(self.router(flat).float(), dim=-1)
            gates, chosen = probs.topk(self.top_k, dim=-1)
        embedding = flat.new_zeros(flat.shape[0], self.experts[0][-1].out_features)
        for index, expert in enumerate(self.experts):
            rows, slot = (chosen == index).nonzero(as_tuple=True)
            if rows.numel():
                weighted = expert(flat[rows]) * gates[rows, slot, None].to(flat.dtype)
                embedding = embedding.index_add(0, rows, weighted)
        usage = F.one_hot(chosen, num_experts).float().sum(dim=1).mean(dim=0) / chosen.shape[1]
        if self.router is None:
            aux_loss = flat.new_zeros((), dtype=torch.float32)
        else:
            aux_loss = num_experts * (usage * probs.mean(dim=0)).sum()
        return ExpertOutput(embedding.view(batch_size, num_frames, -1), aux_loss, usage)


def fixed_experts_of(modalities: tuple[str, ...], config: AstraConfig, device: torch.device) -> torch.Tensor:
    """Expert index of every sample from `config.fixed_expert_of_modality` (expert_routing == "fixed")."""
    table = dict(config.fixed_expert_of_modality)
    missing = sorted({m for m in modalities if m not in table})
    if missing:
        raise ValueError(f"fixed expert routing: no expert for modality {missing}; table has {sorted(table)}")
    return torch.tensor([table[m] for m in modalities], dtype=torch.long, device=device)
