"""Which parameters train: glob patterns over module paths (config.trainable), and parameter counts by group."""

from __future__ import annotations

from fnmatch import fnmatchcase

from torch import nn

from astra.model.config import AstraConfig

# Reporting groups, first match wins; everything else is the frozen Wan backbone.
PARAMETER_GROUPS: tuple[tuple[str, str], ...] = (
    ("self_attention", "blocks.*.self_attn.*"),
    ("act_adapters", "blocks.*.act_adapter.*"),
    ("action_experts", "blocks.*.action_experts.*"),
    ("action_projectors", "action_projectors.*"),
    ("motion_prior", "motion_prior.*"),
    ("history_embedders", "history_embedders.*"),
)
BACKBONE_GROUPS = ("backbone_other", "self_attention")  # together: the Wan2.1 transformer


def is_trainable(name: str, patterns: tuple[str, ...] | None) -> bool:
    """True when a pattern matches the parameter's module path or any prefix of it (`blocks.*.self_attn`)."""
    if patterns is None:
        return True
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatchcase(prefix, pattern) for pattern in patterns for prefix in prefixes)


def apply_freeze_policy(model: nn.Module, config: AstraConfig) -> nn.Module:
    """Set requires_grad from `config.trainable` (None = everything trains). Returns the model."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(is_trainable(name, config.trainable))
    return model


def parameter_group(name: str) -> str:
    for group, pattern in PARAMETER_GROUPS:
        if fnmatchcase(name, pattern):
            return group
    return "backbone_other"


def count_parameters(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{group: (total, trainable)} for every group in PARAMETER_GROUPS + "backbone_other", plus "total"."""
    counts = {group: [0, 0] for group in ("backbone_other", *(g for g, _ in PARAMETER_GROUPS), "total")}
    for name, parameter in model.named_parameters():
        for group in (parameter_group(name), "total"):
            counts[group][0] += parameter.numel()
            counts[group][1] += parameter.numel() if parameter.requires_grad else 0
    return {group: (total, trainable) for group, (total, trainable) in counts.items()}
