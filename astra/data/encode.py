"""Encode episodes once with a video VAE into latent shards that training reads (docs/data-format.md).

Each episode (or each clip of it, with `max_latent_frames`) becomes fp16 latents [C, F, h, w] plus float32
per-latent actions [F, width] from astra.actions.align. Resumable: every finished shard is recorded in this
rank's index fragment; a rerun skips the episodes listed in any rank's fragment. Bad episodes are skipped,
reported in report-r<rank>.json and printed, and retried on the next run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from astra.actions.align import FRAMES_PER_LATENT, latent_actions, scales_from_meta, usable_frames
from astra.data.format import list_episodes, read_episode
from astra.errors import DataError
from astra.files import atomic_path, atomic_write_text, exclusive_lock

LATENT_FORMAT_VERSION = 1
INDEX_FILE = "index.json"
INDEX_LOCK = ".index.lock"  # held while index.json is merged (merge_index)


def write_json_atomic(path: Path, content: object) -> None:
    atomic_write_text(path, json.dumps(content, indent=1))


def episode_source(path: Path, root: Path, meta: dict) -> str:
    """Which world or dataset an episode comes from: meta world / dataset, else its top folder under root."""
    relative = path.relative_to(root)
    return str(meta.get("world") or meta.get("dataset") or (relative.parts[0] if len(relative.parts) > 1 else root.name))


def clip_ranges(num_frames: int, max_latent_frames: int) -> list[tuple[int, int]]:
    """Frame ranges [start, stop) of 4k+1 frames each; consecutive clips share their boundary frame."""
    usable = usable_frames(num_frames)
    if max_latent_frames <= 0:
        return [(0, usable)]
    span = (max_latent_frames - 1) * FRAMES_PER_LATENT
    if span <= 0:
        raise ValueError(f"max_latent_frames must be at least 2, got {max_latent_frames}")
    starts = range(0, max(usable - 1, 1), span)
    return [(start, min(start + span, usable - 1) + 1) for start in starts]


def rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else torchrun's RANK / WORLD_SIZE, else a single process."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} must be in [0, world_size={world_size})")
    return rank, world_size


@dataclass
class EncodeReport:
    encoded: int = 0  # episodes encoded in this run
    clips: int = 0
    already_done: int = 0  # episodes found in the index from an earlier run
    skipped: list[dict] = field(default_factory=list)  # {"episode", "reason"}

    def summary(self) -> str:
        lines = [
            f"encoded {self.encoded} episodes ({self.clips} clips), {self.already_done} already done, "
            f"{len(self.skipped)} skipped"
        ]
        lines += [f"  skipped {item['episode']}: {item['reason']}" for item in self.skipped]
        return "\n".join(lines)


def _encode_clip(vae, frames: np.ndarray, device: torch.device) -> torch.Tensor:
    video = torch.from_numpy(frames).to(device).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
    with torch.inference_mode():
        latents = vae.encode(video)[0]
    expected = (frames.shape[0] - 1) // FRAMES_PER_LATENT + 1
    if latents.ndim != 4 or latents.shape[1] != expected:
        raise RuntimeError(f"VAE returned latents of shape {tuple(latents.shape)}, expected [C, {expected}, h, w]")
    return latents.to("cpu", torch.float16).contiguous()


def merge_index(out: Path) -> dict:
    """Combine every rank's fragment into index.json (the file training reads).

    Each rank merges once its own fragment is final, without waiting for the others. Merges run one at a time under
    a lock and read the fragments inside it, so the last merge sees every rank's final fragment: without the lock, a
    rank that read the fragments before another rank's last write could replace a complete index with its stale one.
    """
    with exclusive_lock(out / INDEX_LOCK):
        entries = []
        vae_names = set()
        for fragment in sorted(out.glob("index-r*.json")):
            content = json.loads(fragment.read_text())
            vae_names.add(content["vae"])
            entries += content["entries"]
        if len(vae_names) > 1:
            raise DataError(f"{out}: index fragments were encoded with different VAEs: {sorted(vae_names)}")
        index = {"format_version": LATENT_FORMAT_VERSION, "vae": next(iter(vae_names), None), "entries": entries}
        write_json_atomic(out / INDEX_FILE, index)
    return index


def encode_episodes(
    episodes_root: str | Path,
    vae,
    out: str | Path,
    vae_name: str = "",
    shard_size: int = 64,
    rank: int | None = None,
    world_size: int | None = None,
    max_latent_frames: int = 0,
    device: str | torch.device = "cpu",
) -> EncodeReport:
    """Encode this rank's share of the episodes under `episodes_root` into shards under `out`."""
    episodes_root, out = Path(episodes_root), Path(out)
    rank, world_size = rank_and_world_size(rank, world_size)
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if max_latent_frames < 0 or max_latent_frames == 1:  # up front: in clip_ranges it skipped every episode
        raise ValueError(f"max_latent_frames must be 0 (whole episodes) or at least 2, got {max_latent_frames}")
    episodes = list_episodes(episodes_root)
    if not episodes:
        raise DataError(f"no episodes (folders with meta.json) under {episodes_root}")
    out.mkdir(parents=True, exist_ok=True)
    fragment_path = out / f"index-r{rank}.json"
    fragments = {path: json.loads(path.read_text()) for path in sorted(out.glob("index-r*.json"))}
    fragment = fragments.get(fragment_path, {"vae": vae_name, "max_latent_frames": max_latent_frames, "entries": []})
    for path, earlier in fragments.items():  # a rerun must cut clips as the first run did, on every rank
        if earlier["vae"] != vae_name:
            raise DataError(f"{path}: encoded with VAE {earlier['vae']!r}, not {vae_name!r}; use another --out")
        if earlier.get("max_latent_frames", max_latent_frames) != max_latent_frames:
            raise DataError(
                f"{path}: encoded with --max-latent-frames {earlier['max_latent_frames']}, not {max_latent_frames}; "
                "use another --out"
            )
    # Episodes in any rank's fragment are done: a rerun may split the work with another --world-size. Skipped
    # episodes are in none, so they are retried (and reported) again.
    done = {entry["episode"] for earlier in fragments.values() for entry in earlier["entries"]}
    mine = episodes[rank::world_size]
    report = EncodeReport(already_done=sum(str(p.relative_to(episodes_root)) in done for p in mine))
    todo = [p for p in mine if str(p.relative_to(episodes_root)) not in done]
    shard_number = len({entry["shard"] for entry in fragment["entries"]})
    tensors: dict[str, torch.Tensor] = {}
    pending_entries: list[dict] = []

    def flush() -> None:
        nonlocal shard_number, tensors, pending_entries
        if tensors:
            shard = f"shard-r{rank}-{shard_number:05d}.safetensors"
            with atomic_path(out / shard) as temporary:
                save_file(tensors, str(temporary))
            for entry in pending_entries:
                entry["shard"] = shard
            shard_number += 1
        fragment["entries"] += pending_entries
        write_json_atomic(fragment_path, fragment)
        tensors, pending_entries = {}, []

    for path in tqdm(todo, desc=f"encode rank {rank}", unit="episode"):
        name = str(path.relative_to(episodes_root))
        try:
            episode = read_episode(path)
            clips = []
            for start, stop in clip_ranges(episode.num_frames, max_latent_frames):
                poses = None if episode.poses is None else episode.poses[start:stop]
                actions = latent_actions(episode.modality, episode.actions[start:stop], poses, episode.meta)
                latents = _encode_clip(vae, episode.frames[start:stop], torch.device(device))
                clips.append((start, stop, latents, actions))
        except (DataError, ValueError, RuntimeError) as error:
            report.skipped.append({"episode": name, "reason": str(error)})
            continue
        for start, stop, latents, actions in clips:
            key = f"{len(pending_entries)}"
            tensors[f"{key}.latents"], tensors[f"{key}.actions"] = latents, torch.from_numpy(actions)
            pending_entries.append(
                {
                    "episode": name,
                    "key": key,
                    "frame_range": [start, stop],
                    "latent_frames": int(latents.shape[1]),
                    "modality": episode.modality,
                    "source": episode_source(path, episodes_root, episode.meta),
                    "split": episode.split,
                    "caption": episode.caption,
                    "scales": scales_from_meta(episode.meta),  # rollout must convert actions the same way
                }
            )
        report.encoded += 1
        report.clips += len(clips)
        if len(pending_entries) >= shard_size:
            flush()
    flush()
    merge_index(out)
    write_json_atomic(
        out / f"report-r{rank}.json",
        {"encoded": report.encoded, "clips": report.clips, "already_done": report.already_done, "skipped": report.skipped},
    )
    return report
