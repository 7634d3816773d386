"""The one `astra` command. Subcommands are imported lazily so that `astra --help` is instant.

Each subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from astra.errors import AstraError

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("astra.model.info", "build a model (on the meta device) and print its parameter counts"),
    "worlds": ("astra.worlds.cli", "record action-labelled episodes from simulators; preview them"),
    "data": ("astra.data.cli", "encode episodes to latents; inspect datasets"),
    "vae": ("astra.vae.cli", "train or evaluate the small VAE"),
    "train": ("astra.train.cli", "train an Astra model (flow matching, noisy memory, action dropout)"),
    "eval": ("astra.eval.cli", "evaluate a model on held-out simulator episodes"),
    "generate": ("astra.rollout.cli", "generate a video from an image or a world and an action sequence"),
    "play": ("astra.serve.cli", "play a world model live in the browser"),
    "bench": ("astra.rollout.bench", "benchmark streaming generation speed and memory"),
}


def _usage() -> str:
    lines = ["usage: astra COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `astra COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from astra import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"astra: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"astra {name}", description=COMMANDS[name][1])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (AstraError, OSError, ValueError) as error:  # OSError: a path that exists, is a file, is not writable
        if args.debug:
            raise
        print(f"astra {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"astra {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
