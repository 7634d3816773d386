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

from astra.config_fields import changed_settings, read_json_object
from astra.errors import AstraError

if TYPE_CHECKING:  # torch is imported lazily, after the config is validated
    import torch

    from astra.train.config import TrainConfig
    from astra.train.trainer import Trainer

HELP = "train an Astra model (flow matching, noisy memory, action dropout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", default="astra-small",
        help="training preset: astra-tiny, astra-small, wan2.1-t2v-1.3b (with --resume or --export, a run directory's "
        "saved train_config.json is used instead)",
    )
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


# What may differ from a run's saved settings when it is resumed or exported: none of these changes the weights
# a checkpoint holds or how its frozen parts are rebuilt (init_from; for checkpoints older than the data-derived
# state they hold, also the motion-prior fit and the data's statistics).
MAY_CHANGE_ON_RESUME = frozenset(
    {"steps", "log_every", "save_every", "keep_checkpoints", "val_every", "val_batches", "grad_checkpointing",
     "parallel", "mixed_precision", "sampling"}
)


def resolve_config(args: argparse.Namespace):
    """The preset, then --config, then --set. With --resume or --export in a run directory that holds
    train_config.json, that saved config replaces the preset: a checkpoint holds only the trainable weights, so the
    frozen ones must be rebuilt exactly as the run built them, and an export's metadata must describe that run."""
    from astra.train.config import TrainConfig, get_preset

    explicit: dict[str, Any] = {}
    if args.config is not None:
        explicit |= read_json_object(args.config, label=f"--config {args.config}", holding="TrainConfig settings")
    explicit |= parse_overrides(args.overrides)
    saved_path = args.out / "train_config.json"
    continuing = args.export or args.resume
    if continuing and saved_path.is_file():
        settings = read_json_object(saved_path, label=str(saved_path), holding="TrainConfig settings")
        saved = TrainConfig.from_dict(settings)
        config = saved.with_updates(explicit)
        refused = changed_settings(saved.to_dict(), config.to_dict(), MAY_CHANGE_ON_RESUME)
        if refused:
            raise AstraError(
                f"{args.out} was trained with other settings than --config/--set give ({'; '.join(refused)}); "
                f"--resume and --export go on with the run's own train_config.json (only "
                f"{', '.join(sorted(MAY_CHANGE_ON_RESUME))} may change): to change the others, start a new --out "
                f"with --set init_from={args.out}/export"
            )
    else:
        config = get_preset(args.preset).with_updates(explicit)
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
    if info.is_main and not (args.validate or args.export) and (hint := cpu_bf16_hint(config, info.device)):
        print(hint)
    finished = False
    try:
        resume = args.resume or args.export  # --export goes on from the newest checkpoint too
        _fit_and_export(Trainer(config, args.out, info=info, progress=not args.no_progress, resume=resume), args)
        finished = True
    finally:
        cleanup(synchronize=finished)  # the trainer is gone by now (see cleanup)
    return 0


def cpu_bf16_hint(config: TrainConfig, device: torch.device) -> str | None:
    """A note for CPU runs left in float32 on a CPU with AMX bf16 units, where bf16 autocast trains faster at equal
    held-out loss (docs/results.md, session 44: astra-small, 1.3x the samples/s), or None."""
    import torch

    has_amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()  # private; absent in some builds
    if device.type != "cpu" or config.mixed_precision != "auto" or not has_amx:
        return None
    return "note: this CPU has AMX bf16 units; --set mixed_precision=bf16 trains faster (1.3x for astra-small)"


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
