"""`astra play`: serve the web app for the shipped small model (or any Astra checkpoint)."""

from __future__ import annotations

import argparse
import socket

from astra.errors import AstraError
from astra.rollout.options import add_sampling_arguments, sampling_settings

HELP = "play a world model live in the browser (127.0.0.1 by default)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="astra-small", help="model: a shipped name or a checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8765)
    add_sampling_arguments(parser)
    parser.add_argument("--max-sessions", type=int, default=4, help="concurrent players at most")
    parser.add_argument("--fps", type=float, default=20.0, help="pace of the stream (0 = as fast as generated)")
    parser.add_argument("--no-simulator", action="store_true", help="disable the side-by-side real simulator")


def check_address_free(host: str, port: int) -> None:
    """Bind `host:port` once and let go, so a taken port or an unknown host is one clear line, not a traceback."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        reason = error.strerror or error
        raise AstraError(f"cannot listen on {host}:{port}: {reason} (check --host and --port)") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from astra.rollout.session import rollout_factory
    from astra.serve.app import ServerConfig, SessionFactory, create_app
    from astra.worlds.base import make_world

    sampling = sampling_settings(args)
    config = ServerConfig(host=args.host, port=args.port, max_sessions=args.max_sessions, target_fps=args.fps)
    config.validate()
    check_address_free(args.host, args.port)  # before minutes of model loading, not after
    make_rollout, resolution = rollout_factory(args.checkpoint, **sampling)
    make_simulator = None if args.no_simulator else (lambda world: make_world(world, size=resolution))
    app = create_app(SessionFactory(make_rollout, make_simulator), config)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: anyone who can reach this address can use the server")
    print(f"astra play: open http://{args.host}:{args.port}/ in your browser (Ctrl+C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
