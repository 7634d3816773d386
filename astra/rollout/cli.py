"""`astra generate`: a video from a start image (or a world's start frame) and an action sequence."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from astra.cli import seed_argument
from astra.errors import AstraError
from astra.files import atomic_path, check_output_file
from astra.rollout.options import add_sampling_arguments, sampling_settings

MAX_SCALE = 16  # upscale factor of the written video: 64 px frames become at most 1024 px
HELP = "generate a video from an image or a world and an action sequence"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="astra-small", help="a shipped model name or a checkpoint folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", help="start image (any size: resized and centre-cropped)")
    source.add_argument("--world", default="doom", help="start from a world's held-out start frame: doom, robot, camera, drive")
    parser.add_argument("--modality", help="action modality (default: the world's; required with --image unless keyboard_mouse)")
    parser.add_argument(
        "--actions",
        default=None,
        help="a preset name (see --list-presets), a compact string such as 'w*16,a*8,wd*8', or a JSON file "
        "(default: a preset showing the modality's main motions, e.g. 'explore' for keyboard_mouse; a string "
        "that starts with '-', the no-op key, is written --actions=-*4)",
    )
    parser.add_argument("--latent-frames", type=int, default=None, help="length for presets, in latent frames (4 video frames each)")
    parser.add_argument("--list-presets", action="store_true", help="list the presets of the modality and exit")
    add_sampling_arguments(parser)
    parser.add_argument("--seed", type=seed_argument, default=0)
    parser.add_argument("--out", default="out/generated.mp4", help="output .mp4 (a .gif is also written with --gif)")
    parser.add_argument("--gif", action="store_true", help="also write an animated GIF next to the MP4")
    parser.add_argument("--no-overlay", action="store_true", help="do not draw the actions on the frames")
    parser.add_argument("--scale", type=int, default=4, help="upscale factor of the written video")


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write uint8 [T, H, W, 3] frames as an H.264 MP4 that browsers play, atomically (temp file, then rename)."""
    from astra.data.format import VideoCodec
    from astra.data.format import write_video as encode

    path.parent.mkdir(parents=True, exist_ok=True)
    even = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # yuv420p needs even sizes
    with atomic_path(path) as temporary:
        encode(temporary, even, fps, VideoCodec("libx264", path.name, "yuv420p", {"crf": "18"}))


def write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    with atomic_path(path) as temporary:
        images[0].save(temporary, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from astra.actions.modalities import get_modality
    from astra.actions.parse import parse_actions
    from astra.actions.presets import DEFAULT_PRESET, list_presets
    from astra.rollout.session import MODALITY_OF_WORLD, RolloutSession, load_rollout, read_image
    from astra.worlds.preview import draw_action

    if not args.image and args.world not in MODALITY_OF_WORLD:
        raise AstraError(f"unknown world {args.world!r}; known: {', '.join(MODALITY_OF_WORLD)}")
    modality = args.modality or (MODALITY_OF_WORLD[args.world] if not args.image else "keyboard_mouse")
    get_modality(modality)  # an unknown name is a clear error listing the known ones
    if not args.image and modality != MODALITY_OF_WORLD[args.world]:
        raise AstraError(
            f"--modality {modality} does not fit --world {args.world}, whose actions are "
            f"{MODALITY_OF_WORLD[args.world]} (use --image to drive another modality from a picture)"
        )
    if args.list_presets:
        print("\n".join(list_presets(modality)))
        return 0
    if not 1 <= args.scale <= MAX_SCALE:
        raise AstraError(f"--scale must lie in 1 .. {MAX_SCALE}, got {args.scale}")
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise AstraError(f"--out must name an .mp4 file (add --gif for a GIF beside it), got {args.out}")
    check_output_file(out, "--out")  # before the minutes of generation, not after
    actions = args.actions or DEFAULT_PRESET[modality]
    if args.latent_frames is not None and actions.strip() not in list_presets(modality):
        raise AstraError("--latent-frames sets the length of a preset; an action string or file gives its own")
    latent_actions = parse_actions(actions, modality, args.latent_frames)
    start = read_image(args.image) if args.image else None  # a bad file fails before the model loads
    model, vae, metadata, config = load_rollout(
        args.checkpoint, **sampling_settings(args), seed=args.seed
    )
    world = next((w for w, m in MODALITY_OF_WORLD.items() if m == modality), None)
    action_meta = metadata.get("action_meta", {}).get(world, {})
    session = RolloutSession(model, vae, modality, config, action_meta)

    if start is None:
        from astra.worlds.base import make_world

        simulator = make_world(args.world, size=session.resolution)
        try:
            start = simulator.reset(args.seed, "heldout")
        finally:
            simulator.close()

    for line in session.unusual_action_warnings(latent_actions):
        print(f"warning: {line}")
    chunk = session.chunk_frames
    # Latent frame 0 is the start image; parse_actions returns the actions of the latent frames to generate.
    drive = latent_actions
    usable = len(drive) - len(drive) % chunk
    if usable == 0:
        raise AstraError(f"the action sequence is shorter than one chunk ({chunk} latent frames)")
    frames = [session.start(start)]
    rows = [np.zeros_like(drive[0])]
    for begin in tqdm(range(0, usable, chunk), desc="generate", unit="chunk"):
        chunk_actions = drive[begin : begin + chunk]
        new = session.step_latent(chunk_actions)
        frames.extend(new)
        rows.extend(np.repeat(chunk_actions, len(new) // chunk, axis=0))
    frames = np.stack(frames)
    if not args.no_overlay:  # the rows are per-latent actions, scaled already (docs/actions.md): drawn as they are
        frames = np.stack([
            np.asarray(draw_action(f, r, modality, action_meta, scale=args.scale, scaled=True))
            for f, r in zip(frames, rows)
        ])
    elif args.scale > 1:
        size = (frames.shape[2] * args.scale, frames.shape[1] * args.scale)
        frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.NEAREST)) for f in frames])
    fps = float(model.config.fps)
    write_video(out, frames, fps)
    print(f"wrote {out} ({len(frames)} frames, {len(frames) / fps:.1f} s at {fps:g} fps)")
    if args.gif:
        write_gif(out.with_suffix(".gif"), frames, fps)
        print(f"wrote {out.with_suffix('.gif')}")
    return 0
