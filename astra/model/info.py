"""`astra info`: build a model on the meta device (no memory) and print its parameter counts by group."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from astra.errors import AstraError
from astra.model.checkpoints import ASTRA_CONFIG, ASTRA_FORMAT
from astra.model.config import PRESETS, AstraConfig
from astra.model.freeze import BACKBONE_GROUPS, apply_freeze_policy, count_parameters
from astra.model.transformer import AstraTransformer

HELP = "build a model (on the meta device) and print its parameter counts"
PAPER_TRAINABLE = 366.8e6  # trainable parameters reported by the Astra paper for the 1.3B backbone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default="wan2.1-t2v-1.3b", help=f"a preset ({', '.join(PRESETS)}) or a config.json path"
    )


def load_config(name_or_path: str) -> AstraConfig:
    """A preset, an AstraConfig JSON file, or a checkpoint (its folder or its config.json, which holds the model's
    config under "config" beside the format and metadata)."""
    if name_or_path in PRESETS:
        return AstraConfig.from_preset(name_or_path)
    path = Path(name_or_path)
    if path.is_dir():
        path = path / ASTRA_CONFIG
    if not path.is_file():
        raise AstraError(
            f"--config {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a file nor a checkpoint folder"
        )
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("format") == ASTRA_FORMAT:
            data = data.get("config")
        return AstraConfig.from_dict(data)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as error:
        raise AstraError(f"{path}: not a valid AstraConfig JSON: {error}") from None


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    with torch.device("meta"):
        model = apply_freeze_policy(AstraTransformer(config), config)
    counts = count_parameters(model)
    print(f"config: {args.config}  (dim {config.dim}, {config.num_layers} layers, {config.num_experts} experts)")
    print(f"{'group':<20}{'total':>16}{'trainable':>16}")
    for group, (total, trainable) in counts.items():
        print(f"{group:<20}{total:>16,}{trainable:>16,}")
    backbone = sum(counts[group][0] for group in BACKBONE_GROUPS)
    print(f"{'wan backbone':<20}{backbone:>16,}  ({backbone / 1e9:.3f} B)")
    trainable = counts["total"][1]
    if config.dim == PRESETS["wan2.1-t2v-1.3b"].dim:
        difference = (trainable - PAPER_TRAINABLE) / PAPER_TRAINABLE
        print(
            f"trainable {trainable / 1e6:.1f} M vs the paper's {PAPER_TRAINABLE / 1e6:.1f} M: {difference:+.2%} "
            "(the paper does not give the expert width, the router or the projector sizes; ours: "
            f"{config.num_experts} experts of hidden width {config.expert_hidden_dim} per block, learned router, "
            "and no separate 1x history embedder)"
        )
    return 0
