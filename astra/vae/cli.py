"""`astra vae train` / `astra vae eval`: the small VAE on recorded episodes."""

from __future__ import annotations

import argparse
import json

from astra.cli import seed_argument
from astra.errors import AstraError
from astra.vae.train import VAETrainConfig

HELP = "train or evaluate the small VAE"
_DEFAULTS = VAETrainConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="vae_command", required=True)
    train = commands.add_parser("train", help="train the small VAE on episodes of all worlds jointly")
    train.add_argument("--episodes", nargs="+", required=True, help="episode folders (searched recursively)")
    train.add_argument("--out", default="weights/astra-small-vae", help="checkpoint folder")
    train.add_argument("--preset", default=_DEFAULTS.preset)
    train.add_argument("--steps", type=int, default=_DEFAULTS.steps)
    train.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    train.add_argument("--clip-frames", type=int, default=_DEFAULTS.clip_frames, help="4k+1 frames per clip")
    train.add_argument("--lr", type=float, default=_DEFAULTS.learning_rate)
    train.add_argument("--kl-weight", type=float, default=_DEFAULTS.kl_weight)
    train.add_argument("--gradient-weight", type=float, default=_DEFAULTS.gradient_weight)
    train.add_argument(
        "--temporal-gradient-weight", type=float, default=_DEFAULTS.temporal_gradient_weight,
        help="weight of the L1 between frame-to-frame changes of reconstruction and video",
    )
    train.add_argument("--checkpoint-every", type=int, default=_DEFAULTS.checkpoint_every)
    train.add_argument("--seed", type=seed_argument, default=_DEFAULTS.seed)
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--init-from", default=None, help="start from this trained VAE (fresh optimizer)")
    train.add_argument(
        "--freeze-encoder", action="store_true",
        help="train only the decoder of --init-from: latents (and models trained on them) stay valid",
    )
    train.add_argument(
        "--reference-frame", action="store_true",
        help="add a reference path to --init-from's decoder (each chunk also sees the frame shown before it) and "
        "train only that path: latents and the rest of the decoder stay as they are",
    )

    evaluate = commands.add_parser("eval", help="PSNR/SSIM per world on episodes, and decode ms/frame")
    evaluate.add_argument("--vae", default="astra-small-vae", help="weights name or path (either VAE)")
    evaluate.add_argument("--episodes", nargs="+", required=True)
    evaluate.add_argument("--split", default="heldout", choices=("train", "heldout"))
    evaluate.add_argument("--max-frames", type=int, default=33, help="frames per episode evaluated (4k+1)")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.add_argument(
        "--latents-vs",
        metavar="VAE",
        help="also report per world how far the normalised latents moved from those of VAE "
        "(|z - z_VAE|^2 / |z_VAE|^2): whether a transformer trained on VAE's latents still fits",
    )


def run(args: argparse.Namespace) -> int:
    from astra.vae import load_vae
    from astra.vae.small import read_small_vae_config
    from astra.vae.train import evaluate_vae, load_clip_pool, train_vae

    if args.vae_command == "train":
        config = VAETrainConfig(
            preset=args.preset,
            steps=args.steps,
            batch_size=args.batch_size,
            clip_frames=args.clip_frames,
            learning_rate=args.lr,
            kl_weight=args.kl_weight,
            gradient_weight=args.gradient_weight,
            temporal_gradient_weight=args.temporal_gradient_weight,
            checkpoint_every=args.checkpoint_every,
            seed=args.seed,
            init_from=args.init_from,
            freeze_encoder=args.freeze_encoder,
            reference_frame=args.reference_frame,
        )
        config.validate()
        if args.init_from:  # a bad --init-from is named now, not after minutes of reading episodes
            read_small_vae_config(args.init_from)
        pool = load_clip_pool(args.episodes, split="train")
        vae = train_vae(pool, args.out, config, resume=args.resume)
        params = sum(p.numel() for p in vae.parameters())
        print(f"saved {args.out} ({params:,} parameters; worlds: {', '.join(pool.worlds)})")
        return 0
    if args.max_frames < 1 or (args.max_frames - 1) % 4:
        raise AstraError(f"--max-frames must be 4k + 1 (1, 5, 9, ...), got {args.max_frames}")
    vae = load_vae(args.vae)
    reference = load_vae(args.latents_vs) if args.latents_vs else None
    pool = load_clip_pool(args.episodes, split=args.split)
    results = evaluate_vae(vae, pool, max_frames=args.max_frames, reference=reference)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    speed = results.pop("speed")
    change_header = f"{'latent change':>15}" if reference is not None else ""
    print(f"{'world':<16}{'episodes':>9}{'PSNR dB':>9}{'SSIM':>8}{change_header}")
    for world, row in results.items():
        change = f"{row['latent_change']:>15.4f}" if reference is not None else ""
        print(f"{world:<16}{row['episodes']:>9}{row['psnr']:>9.2f}{row['ssim']:>8.4f}{change}")
    print(
        f"decode {speed['decode_ms_per_frame']:.2f} ms/frame one-shot, "
        f"{speed['stream_decode_ms_per_frame']:.2f} ms/frame streaming"
    )
    return 0
