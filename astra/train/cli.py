"""`astra train`: train an Astra model from a preset, a JSON config and `--set key=value` overrides.

Runs single-process or under torchrun (DDP for small presets, FSDP for the Wan preset). Writes
`<out>/train_config.json`, `<out>/checkpoints/step-*.pt`, `<out>/metrics.csv`, `<out>/tensorboard/` and, at the
end (or with --export alone), `<out>/export/` via astra.model.checkpoints.save_astra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astra.config_fields import read_json_object
from astra.errors import AstraError

if TYPE_CHECKING:  # torch is imported lazily, after the config is validated
    from astra.train.trainer import Trainer

HELP = "train an Astra model (flow matching, noisy memory, action dropout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="astra-small", help="training preset: astra-tiny, astra-small, wan2.1-t2v-1.3b")
    parser.add_argument("--config", type=Path, help="JSON file of TrainConfig settings applied over the preset")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting (value parsed as JSON, else a string); dotted keys: flow.shift=3",
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, logs, export)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--export", action="store_true", help="only export the newest checkpoint (EMA weights), no training")
    parser.add_argument(
        "--validate", action="store_true",
        help="only print the held-out validation loss (per world, with and without actions) of the weights training "
        "would start from (init_from), or with --resume of the newest checkpoint's EMA weights; writes nothing",
    )
    parser.add_argument(
        "--measure", action="store_true",
        help="measure samples/s and step memory with and without gradient checkpointing (synthetic data), no training",
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    updates = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise AstraError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            updates[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            updates[key.strip()] = text
    return updates


def resolve_config(args: argparse.Namespace):
    from astra.train.config import TrainConfig, get_preset

    config = get_preset(args.preset)
    if args.config is not None:
        settings = read_json_object(args.config, label=f"--config {args.config}", holding="TrainConfig settings")
        config = config.with_updates(settings)
    config = config.with_updates(parse_overrides(args.overrides))
    try:
        config.validate()
    except TypeError as error:  # a JSON value of the wrong kind (e.g. a string where a number belongs)
        raise AstraError(f"invalid setting: {error}") from None
    assert isinstance(config, TrainConfig)
    return config


def run(args: argparse.Namespace) -> int:
    chosen = [flag for flag in ("validate", "export", "measure") if getattr(args, flag)]
    if len(chosen) > 1:
        raise AstraError(f"--{' and --'.join(chosen)} each replace training: choose one")
    config = resolve_config(args)
    if args.measure:
        from astra.train.measure import measure

        for row in measure(config.replace(data="synthetic")):
            print(json.dumps(row))
        return 0

    from astra.train.distributed import cleanup, init_distributed
    from astra.train.trainer import Trainer

    info = init_distributed()
    finished = False
    try:
        _fit_and_export(Trainer(config, args.out, info=info, progress=not args.no_progress), args)
        finished = True
    finally:
        cleanup(synchronize=finished)  # the trainer is gone by now (see cleanup)
    return 0


def _fit_and_export(trainer: Trainer, args: argparse.Namespace) -> None:
    """A helper so that the trainer (and the DDP wrapper holding the process group) is dropped on return."""
    if args.validate:
        if args.resume and not trainer.resume():
            raise AstraError(f"{args.out}: no checkpoint to validate")
        metrics = trainer.validate()
        if trainer.info.is_main:
            from astra.train.validation import format_validation

            print(f"held-out validation at step {trainer.step} ({trainer.config.val_batches} batches):")
            print(format_validation(metrics))
        return
    if args.export:
        if not trainer.resume():
            raise AstraError(f"{args.out}: no checkpoint to export")
    else:
        trainer.fit(resume=args.resume)
    path = trainer.export()
    if path is not None:
        print(f"exported step {trainer.step} to {path}")
