"""The sampler flags every generating command shares (`astra generate`, `astra play`, `astra eval`).

Each defaults to None, meaning the checkpoint's own setting (its metadata's `sampling`), so a flag given on the
command line is the only thing that ever departs from what the model was exported with. `torch_device` checks the
--device of `astra bench`, `astra eval` and `astra data encode` up front.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from astra.errors import AstraError
from astra.rollout.anchor import MATCHES


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the checkpoint's)")
    parser.add_argument(
        "--shift", type=float, default=None,
        help="timestep shift of the denoising schedule: above 1 spends more of the steps at high noise, where the "
        "layout and the motion are decided (default: the checkpoint's; Wan2.1 uses 5)",
    )
    parser.add_argument(
        "--guidance-scale", "--guidance", dest="guidance_scale", type=float, default=None, metavar="SCALE",
        help="action-free guidance scale s in v_null + s (v_act - v_null) "
        "(default: the checkpoint's; the paper uses 3)",
    )
    parser.add_argument(
        "--history-noise", type=float, default=None,
        help="noise level of the memory the model sees, 0 = clean (default: the checkpoint's)",
    )
    parser.add_argument(
        "--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
        help="flow times at which guidance applies, 0 <= LO <= HI <= 1 (default: the checkpoint's)",
    )
    parser.add_argument(
        "--guidance-outside", type=float, default=None, metavar="SCALE",
        help="action scale of the steps outside --guidance-interval: 1 conditional, 0 action-free "
        "(default: the checkpoint's)",
    )
    parser.add_argument(
        "--noise-scale", type=float, default=None, metavar="SCALE",
        help="scale of each chunk's starting noise (sampling temperature): 1 as trained, 0 deterministic "
        "(default: the checkpoint's)",
    )
    parser.add_argument(
        "--stats-anchor", type=float, default=None, metavar="FRACTION",
        help="pull each generated latent frame's colour and contrast statistics this fraction of the way toward the "
        "start frame's, against colour drift and fading: 0 off, 1 match (default: the checkpoint's)",
    )
    parser.add_argument(
        "--stats-anchor-match", choices=MATCHES, default=None,
        help="what --stats-anchor pulls: each channel's mean (colour) only, each channel's mean and contrast, or "
        "the mean and the channels' joint covariance (default: the checkpoint's)",
    )
    parser.add_argument(
        "--guide-anchor", action=argparse.BooleanOptionalAction, default=None,
        help="guidance moves the copy prior's anchor along the action's motion too (the whole velocity guided): "
        "follows actions more, at a cost in next-chunk PSNR and long rollouts (default: the checkpoint's)",
    )


def torch_device(name: str, option: str = "--device") -> torch.device:
    """`name` as a torch device this machine has (cpu, cuda, cuda:N or mps), checked before any model loads: an
    unknown name was a torch RuntimeError traceback and cuda without CUDA an AssertionError deep inside torch."""
    known = "cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AstraError(f"{option} {name!r} is not a torch device; astra runs on {known}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AstraError(f"{option} {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AstraError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise AstraError(f"{option} {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise AstraError(f"{option} {name!r}: astra runs on {known}")
    return device


def sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as keyword arguments of `load_rollout` / `rollout_factory` / `evaluate` (ranges are checked by
    RolloutConfig.validate once merged with the checkpoint's; --steps here, before minutes of model loading)."""
    if args.steps is not None and args.steps < 1:
        raise AstraError(f"--steps must be >= 1, got {args.steps}")
    return {
        "steps": args.steps,
        "shift": args.shift,
        "guidance_scale": args.guidance_scale,
        "history_noise": args.history_noise,
        "guidance_interval": args.guidance_interval,
        "guidance_outside": args.guidance_outside,
        "noise_scale": args.noise_scale,
        "stats_anchor": args.stats_anchor,
        "stats_anchor_match": args.stats_anchor_match,
        "guide_anchor": args.guide_anchor,
    }
