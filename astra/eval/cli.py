"""`astra eval`: held-out evaluation of a checkpoint on the simulator worlds (report.md, results.json, PNGs)."""

from __future__ import annotations

import argparse

from astra.cli import seed_argument
from astra.eval.compare import compare
from astra.eval.presets import PresetStressConfig, stress_presets
from astra.eval.report import EvalConfig, evaluate
from astra.rollout.options import add_sampling_arguments, sampling_settings, torch_device

HELP = "evaluate a model on held-out simulator episodes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvalConfig()
    parser.add_argument("--checkpoint", default="astra-small", help="shipped model name or checkpoint folder")
    parser.add_argument("--worlds", default=",".join(defaults.worlds), help="comma-separated worlds")
    parser.add_argument(
        "--cases", type=int, default=None,
        help=f"held-out cases per world (default {defaults.cases}; with --presets: start frames, default "
        f"{PresetStressConfig().starts})",
    )
    parser.add_argument("--out", default="docs/eval", help="folder for report.md, results.json and the plots")
    parser.add_argument("--rollout-frames", type=int, default=defaults.rollout_frames, help="long-rollout length")
    parser.add_argument(
        "--hold-still-frames", type=int, default=defaults.hold_still_frames,
        help="frames per case generated with nothing pressed, scored against the simulator's (0 = skip)",
    )
    parser.add_argument("--context-frames", type=int, default=defaults.context_frames, help="4k+1 policy frames first")
    parser.add_argument(
        "--seed", type=seed_argument, default=defaults.seed, help="first held-out seed (case i uses seed+i)"
    )
    parser.add_argument(
        "--split", choices=("heldout", "train"), default=defaults.split,
        help="held-out episodes (default; all reported numbers) or train episodes (only to tune sampling settings)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model (cpu, cuda, cuda:N, mps)")
    add_sampling_arguments(parser)
    parser.add_argument(
        "--presets", action="store_true",
        help="instead: the preset stress test (every action preset of each world held for --rollout-frames from "
        "held-out starts; saturated, blank and frozen frames; presets.md in --out)",
    )
    parser.add_argument(
        "--compare", nargs="+", default=None, metavar="RESULTS",
        help="only print a table of earlier evaluations (their --out folders or results.json), the first as the "
        "reference, and the settings in which they differ; evaluates nothing",
    )


def run(args: argparse.Namespace) -> int:
    if args.compare is not None:
        print(compare(args.compare), end="")
        return 0
    torch_device(args.device)  # an unknown device or cuda without CUDA: one line, before the model loads
    worlds = tuple(name.strip() for name in args.worlds.split(",") if name.strip())
    if args.presets:
        return run_presets(args, worlds)
    config = EvalConfig(
        worlds=worlds,
        cases=EvalConfig.cases if args.cases is None else args.cases,
        context_frames=args.context_frames,
        rollout_frames=args.rollout_frames,
        hold_still_frames=args.hold_still_frames,
        seed=args.seed,
        split=args.split,
    )
    results = evaluate(
        config,
        args.out,
        checkpoint=args.checkpoint,
        **sampling_settings(args),
        device=args.device,
    )
    for world in results["worlds"]:
        chunk, following = world["next_chunk"], world["action_following"]
        score = "-" if following["score"] is None else f"{following['score']:.2f}"
        held = world.get("hold_still", {})
        last = max(held.get("psnr_at", {}), key=int, default=None)
        still = "" if last is None else (
            f", hold still t={last} {held['psnr_at'][last]:.2f} dB (start held {held['psnr_at_start_held'][last]:.2f})"
        )
        print(
            f"{world['world']:>7}: PSNR {chunk['psnr']:.2f} dB (copy-last {chunk['psnr_copy_last']:.2f}), "
            f"action following {score} (n={following['n']}){still}, bars {world['bars']}"
        )
    print(f"report: {args.out}/report.md")
    return 0


def run_presets(args: argparse.Namespace, worlds: tuple[str, ...]) -> int:
    config = PresetStressConfig(
        worlds=worlds,
        starts=PresetStressConfig.starts if args.cases is None else args.cases,
        rollout_frames=args.rollout_frames,
        late_from=args.rollout_frames // 2,
        seed=args.seed,
        split=args.split,
    )
    sampling = sampling_settings(args)
    results = stress_presets(config, args.out, checkpoint=args.checkpoint, device=args.device, **sampling)
    for world in results["worlds"]:
        worst = {name: max(scores["late_saturated"]) for name, scores in world["presets"].items()}
        print(f"{world['world']:>7}: worst saturated fraction " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))
    print(f"report: {args.out}/presets.md")
    return 0
