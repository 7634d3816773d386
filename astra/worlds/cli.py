"""`astra worlds record ...` and `astra worlds preview ...`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from astra.cli import seed_argument
from astra.worlds.base import SPLITS, WORLDS

HELP = "record action-labelled episodes from simulators; preview them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="worlds_command", required=True)
    record = commands.add_parser("record", help="record episodes with a world's exploration policy")
    record.add_argument("--world", required=True, choices=sorted(WORLDS))
    record.add_argument("--episodes", type=int, required=True)
    record.add_argument("--frames", type=int, default=161, help="frames per episode (4k + 1 preferred)")
    record.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    record.add_argument("--out", type=Path, required=True)
    record.add_argument("--split", choices=SPLITS, default="train")
    record.add_argument("--seed", type=seed_argument, default=0, help="seed of the first episode (then seed + 1, ...)")
    record.add_argument("--workers", type=int, default=1, help="parallel recording processes")
    record.add_argument("--maps", nargs="+", help="doom only: restrict to these maps (e.g. MAP01 MAP02)")

    preview = commands.add_parser("preview", help="contact sheet PNG and/or animated GIF with actions drawn")
    preview.add_argument("dir", type=Path, help="folder of episodes (or one episode folder)")
    preview.add_argument("--out", type=Path, nargs="+", default=[Path("preview.png")], help="file.png and/or file.gif")
    preview.add_argument("--episodes", type=int, default=4, help="how many episodes to show")
    preview.add_argument("--columns", type=int, default=8, help="frames per episode on the contact sheet")
    preview.add_argument("--scale", type=int, default=2, help="pixel upscaling of each frame")


def run(args: argparse.Namespace) -> int:
    if args.worlds_command == "record":
        from astra.worlds.record import RecordConfig, record

        if args.frames % 4 != 1:
            print(f"note: --frames {args.frames} is not 4k + 1; the last latent frame will be partial")
        options = {"maps": args.maps} if args.maps else {}
        if args.maps and args.world != "doom":
            raise ValueError("--maps applies to --world doom only")
        config = RecordConfig(
            world=args.world, out=args.out, episodes=args.episodes, frames=args.frames, size=args.size,
            split=args.split, seed=args.seed, workers=args.workers, world_options=options,
        )
        summary = record(config)
        print(
            f"wrote {summary['written']} episodes ({summary['frames']} frames) to {summary['out']} in "
            f"{summary['seconds']:.1f} s: {summary['frames_per_second']:.0f} frames/s; "
            f"skipped {summary['skipped_complete']} complete, {summary['failed']} failed"
        )
        print("action statistics: " + json.dumps({k: round(v, 3) for k, v in summary["action_stats"].items()}))
        return 0 if summary["failed"] == 0 else 1
    from astra.worlds.preview import PreviewConfig, preview

    for path in preview(args.dir, args.out, PreviewConfig(args.episodes, args.columns, args.scale)):
        print(f"wrote {path}")
    return 0
