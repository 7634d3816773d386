"""The one `astra` command. Subcommands are imported lazily so that `astra --help` is instant.

Each subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from astra.config_fields import MAX_SEED
from astra.errors import AstraError

COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("astra.model.info", "build a model (on the meta device) and print its parameter counts"),
    "worlds": ("astra.worlds.cli", "record action-labelled episodes from simulators; preview them"),
    "data": ("astra.data.cli", "encode episodes to latents; pack them small; inspect datasets"),
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


def seed_argument(text: str) -> int:
    """argparse type of every --seed: a whole number in [0, 2**32 - 1] (numpy's error named no option)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside 0 .. {MAX_SEED:,}")
    return value


def empty_values(arguments: list[str]) -> list[str]:
    """The options (or "a positional argument") given an empty or blank value, as `--out ""` or `--out=`."""
    found = []
    for index, value in enumerate(arguments):
        option, equals, attached = value.partition("=") if value.startswith("--") else (value, "", "")
        if equals and not attached.strip():
            found.append(option)
        elif not value.strip():
            previous = arguments[index - 1] if index else ""
            found.append(previous if previous.startswith("-") else "a positional argument")
    return found


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def interrupt_on_terminate() -> Any:
    """Make SIGTERM (`kill`, `timeout`, a job scheduler) unwind like Ctrl+C, so every `finally` runs: simulators
    are closed (a killed recorder left its ViZDoom process running), temporary files removed. Returns the handler
    it replaced; does nothing outside the main thread, where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _interrupt)


def describe_error(error: BaseException) -> str:
    """The message a user reads: the file-system errors that name a path say what is wrong with it in words."""
    path = getattr(error, "filename", None)
    if isinstance(error, FileExistsError) and path and Path(path).is_file():
        return f"{path} is a file, where a folder is needed"
    if isinstance(error, NotADirectoryError) and path:
        return f"{path}: part of this path is a file, where a folder is needed"
    if isinstance(error, PermissionError) and path:
        return f"permission denied: {path}"
    if isinstance(error, MemoryError):
        return "out of memory: ask for fewer frames, a smaller size or a smaller scale"
    return str(error)


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
    try:
        empty = empty_values(rest)
        if empty:  # an unset shell variable: `--out $OUT` would have written into the current folder
            parser.error(f"empty value for {empty[0]}")
        args = parser.parse_args(rest)
    except SystemExit as stop:  # argparse's errors (2) and --help (0), returned like every other outcome
        return int(stop.code or 0)
    plain_format, plain_terminate = warnings.formatwarning, interrupt_on_terminate()
    if not args.debug:  # one line a user can read, not the file and line deep in torch that a stacklevel lands on
        warnings.formatwarning = lambda message, *_, **__: f"astra {name}: warning: {message}\n"
    try:
        return int(module.run(args) or 0)
    except (AstraError, OSError, ValueError, MemoryError) as error:  # OSError: a path that exists, is a file, ...
        if args.debug:
            raise
        print(f"astra {name}: error: {describe_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"astra {name}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = plain_format
        if plain_terminate is not None:
            signal.signal(signal.SIGTERM, plain_terminate)


if __name__ == "__main__":
    sys.exit(main())
