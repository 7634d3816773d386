"""`astra data encode` (episodes -> latent shards) and `astra data info` (counts per modality/split/source)."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from astra.data.format import list_episodes, read_meta
from astra.errors import DataError

HELP = "encode episodes to latents; pack them small; inspect datasets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="data_command", required=True)
    encode = commands.add_parser("encode", help="encode episodes once with a VAE into latent shards")
    encode.add_argument("--episodes", required=True, help="folder of episodes (searched recursively)")
    encode.add_argument("--vae", required=True, help="VAE name under weights/ or a path (astra.vae.load_vae)")
    encode.add_argument("--out", required=True, help="output folder for shards + index.json")
    encode.add_argument("--shard-size", type=int, default=64, help="clips per shard file")
    encode.add_argument("--max-latent-frames", type=int, default=0, help="cut episodes into clips of at most this many latent frames (0 = whole)")
    encode.add_argument("--rank", type=int, default=None, help="this process's share (default: $RANK or 0)")
    encode.add_argument("--world-size", type=int, default=None, help="number of processes (default: $WORLD_SIZE or 1)")
    encode.add_argument("--device", default=None, help="torch device: cpu, cuda[:N] or mps (default: cuda if available)")
    convert = commands.add_parser("convert", help="convert one of the paper's datasets into episodes")
    convert.add_argument("dataset", help="nuscenes, sekai, spatialvid, rt1 or multicam")
    convert.add_argument("source", help="the dataset's folder, in its published layout (docs/datasets.md)")
    convert.add_argument("out", help="output folder of episodes")
    convert.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None, help="resize frames")
    convert.add_argument("--max-frames", type=int, default=None, help="cut episodes to at most this many frames")
    convert.add_argument("--heldout-fraction", type=float, default=None, help="share of episodes held out")
    convert.add_argument("--overwrite", action="store_true", help="rewrite episodes already converted")
    pack = commands.add_parser(
        "pack", help="quantise and compress encoded latents into one small file (for a machine that takes few MB)"
    )
    pack.add_argument("latents", help="an encoded latents folder (with index.json)")
    pack.add_argument("--out", required=True, help="the pack file to write")
    pack.add_argument("--split", default="train", help="clips of this split only; 'all' for every split (default: train)")
    pack.add_argument("--episodes", nargs="+", default=[], metavar="SOURCE=N",
                      help="at most N episodes of SOURCE, spread over its episodes (0 leaves it out); others whole")
    pack.add_argument("--bits", type=int, default=6, help="bits per latent value, 1-8 (default: 6)")
    pack.add_argument("--clip-std", type=float, default=4.0, help="codes span each channel's mean +- this many std")
    pack.add_argument("--parts", type=int, default=1,
                      help="split into this many files (NAME-1ofN...), each an even sample of the clips")
    unpack = commands.add_parser("unpack", help="write a pack's clips as an encoded latents folder that training reads")
    unpack.add_argument("packs", nargs="+", help="files written by `astra data pack` (e.g. all parts of one)")
    unpack.add_argument("--out", required=True, help="an empty (or new) folder for shards + index.json")
    info = commands.add_parser("info", help="counts per modality / split / source of episodes or latents")
    info.add_argument("dir", help="an episodes folder or an encoded latents folder (with index.json)")


def _print_table(title: str, rows: dict[tuple[str, str, str], list[int]], columns: tuple[str, ...]) -> None:
    print(title)
    print(f"  {'modality':<16}{'split':<9}{'source':<20}" + "".join(f"{c:>14}" for c in columns))
    for (modality, split, source), counts in sorted(rows.items()):
        print(f"  {modality:<16}{split:<9}{source:<20}" + "".join(f"{n:>14}" for n in counts))


def _info(directory: Path) -> int:
    from astra.actions.align import num_latent_frames
    from astra.data.encode import INDEX_FILE, episode_source
    from astra.data.sampler import LatentDataset

    rows: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    if (directory / INDEX_FILE).exists():
        dataset = LatentDataset(directory)
        episodes = defaultdict(set)
        for entry in dataset.entries:
            key = (entry["modality"], entry["split"], entry["source"])
            episodes[key].add(entry["episode"])
            rows[key][1] += 1
            rows[key][2] += entry["latent_frames"]
        for key, names in episodes.items():
            rows[key][0] = len(names)
        _print_table(f"{directory}: latents from VAE {dataset.vae!r}", rows, ("episodes", "clips", "latent frames"))
        return 0
    episodes = list_episodes(directory)
    if not episodes:
        raise DataError(f"{directory}: no episodes (folders with meta.json) and no {INDEX_FILE} of encoded latents")
    for path in episodes:
        meta = read_meta(path)
        counts = rows[(meta["modality"], meta["split"], episode_source(path, directory, meta["meta"]))]
        counts[0] += 1
        counts[1] += meta["num_frames"]
        counts[2] += num_latent_frames(meta["num_frames"])
    _print_table(f"{directory}: episodes", rows, ("episodes", "frames", "latent frames"))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from astra.data.adapters import convert_dataset

    options = {"size": tuple(args.size) if args.size else None, "max_frames": args.max_frames,
               "heldout_fraction": args.heldout_fraction}
    options = {key: value for key, value in options.items() if value is not None}
    report = convert_dataset(args.dataset, args.source, args.out, overwrite=args.overwrite, **options)
    print(report.summary())
    if report.skipped and not report.converted:
        raise DataError(f"every item was skipped, nothing converted into {args.out} (reasons above)")
    return 0


def parse_episode_counts(items: list[str]) -> dict[str, int]:
    """`SOURCE=N` strings -> {source: N}; a malformed item is named."""
    counts: dict[str, int] = {}
    for item in items:
        source, equals, number = item.partition("=")
        if not equals or not source or not number.strip().isdigit():
            raise DataError(f"--episodes {item!r}: expected SOURCE=N with N a whole number, e.g. doom=200")
        counts[source] = int(number)
    return counts


def _pack(args: argparse.Namespace) -> int:
    from astra.data.pack import pack_latents, part_paths

    split = None if args.split == "all" else args.split
    report = pack_latents(
        args.latents, args.out, split=split, per_source=parse_episode_counts(args.episodes), bits=args.bits,
        clip_std=args.clip_std, parts=args.parts,
    )
    print(f"{', '.join(map(str, part_paths(args.out, args.parts)))}: {report.summary()}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.data_command == "info":
        return _info(Path(args.dir))
    if args.data_command == "convert":
        return _convert(args)
    if args.data_command == "pack":
        return _pack(args)
    if args.data_command == "unpack":
        from astra.data.pack import unpack_latents

        clips = unpack_latents(args.packs, args.out)
        print(f"{clips} clips unpacked into {args.out}")
        return 0
    import torch

    from astra.data.encode import encode_episodes
    from astra.rollout.options import torch_device
    from astra.vae import load_vae

    device = torch_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vae = load_vae(args.vae).to(device).eval()
    report = encode_episodes(
        args.episodes, vae, args.out, vae_name=str(args.vae), shard_size=args.shard_size, rank=args.rank,
        world_size=args.world_size, max_latent_frames=args.max_latent_frames, device=device,
    )
    print(report.summary())
    if report.skipped and not report.encoded and not report.already_done:
        raise DataError(f"every episode was skipped, nothing encoded into {args.out} (reasons above)")
    return 0
