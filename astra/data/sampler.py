"""Training samples from encoded latents: history chunk + target chunk + one action per latent frame.

A segment always starts at latent 0 of an encoded clip, because latent 0 is the VAE's single-frame latent and
the model treats history index 0 as the video's first frame (docs/architecture.md); long episodes are cut into
clips at encode time (`--max-latent-frames`). History lengths are drawn once per batch so a batch stacks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from astra.actions.modalities import MODALITIES
from astra.data.encode import INDEX_FILE, LATENT_FORMAT_VERSION
from astra.errors import DataError


# what every index entry holds, and of which kind (json types: bool is not an int here)
INDEX_ENTRY_FIELDS = {"episode": str, "key": str, "shard": str, "modality": str, "source": str, "split": str,
                      "latent_frames": int}  # fmt: skip


def check_index_entry(entry: object, where: str) -> None:
    """Raise DataError naming the entry and field when an index entry is not what `astra data encode` writes."""
    if not isinstance(entry, dict):
        raise DataError(f"{where} is not an object")
    for field, kind in INDEX_ENTRY_FIELDS.items():
        value = entry.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DataError(f"{where}: {field!r} must be a {kind.__name__}, got {value!r}; encode again")
    if entry["latent_frames"] < 1:
        raise DataError(f"{where}: 'latent_frames' must be at least 1, got {entry['latent_frames']}")


DEFAULT_CACHE_BYTES = 2 * 1024**3  # clips kept in memory once read (as stored, float16): the shipped data is 0.3 GB


class LatentDataset:
    """The clips listed in `<root>/index.json`, loaded lazily from their safetensors shards and kept in memory,
    as stored, until `cache_bytes` are held (0 = read every time): a GPU step takes a batch of hundreds of clips,
    and reopening a shard per clip starved it."""

    def __init__(self, root: str | Path, cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.root = Path(root)
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cached_bytes = 0
        index_path = self.root / INDEX_FILE
        try:
            index = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise DataError(f"{index_path}: missing; run `astra data encode` first") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(f"{index_path}: unreadable ({error}); encode again with `astra data encode`") from None
        if not isinstance(index, dict) or index.get("format_version") != LATENT_FORMAT_VERSION:
            version = index.get("format_version") if isinstance(index, dict) else None
            raise DataError(f"{index_path}: format_version {version!r}, expected {LATENT_FORMAT_VERSION}")
        if not isinstance(index.get("entries"), list) or "vae" not in index:
            raise DataError(f"{index_path}: needs 'vae' and a list of 'entries'")
        self.vae: str | None = index["vae"]
        self.entries: list[dict] = index["entries"]
        for number, entry in enumerate(self.entries):
            check_index_entry(entry, f"{index_path}: entries[{number}]")

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents float32 [C, F, h, w], actions float32 [F, width]) of clip i."""
        latents, actions = self.load_stored(i)
        return latents.float(), actions.float()

    def load_stored(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip i as stored (latents float16 from `astra data encode`); callers slice before converting, which
        costs less than converting whole clips. Do not modify the tensors: they may be the cache's."""
        if i in self._cache:
            return self._cache[i]
        entry = self.entries[i]
        shard = self.root / entry["shard"]
        try:
            with safe_open(str(shard), framework="pt") as handle:
                latents = handle.get_tensor(f"{entry['key']}.latents")
                actions = handle.get_tensor(f"{entry['key']}.actions")
        except (OSError, SafetensorError) as error:
            raise DataError(f"{shard}: cannot read clip {entry['key']} of {entry['episode']} ({error})") from None
        if latents.ndim != 4 or latents.shape[1] != entry["latent_frames"] or actions.shape[0] != entry["latent_frames"]:
            raise DataError(f"{shard}: clip {entry['key']} does not have {entry['latent_frames']} latent frames")
        size = latents.nbytes + actions.nbytes
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[i] = (latents, actions)
            self._cached_bytes += size
        return latents, actions


@dataclass
class Segment:
    history_latents: torch.Tensor  # [C, Fh, h, w]
    target_latents: torch.Tensor  # [C, Ft, h, w]
    actions: torch.Tensor  # [Fh + Ft, width] of the segment's modality
    modality: str
    source: str


@dataclass
class SegmentBatch:
    history_latents: torch.Tensor  # [B, C, Fh, h, w]
    target_latents: torch.Tensor  # [B, C, Ft, h, w]
    actions: torch.Tensor  # [B, Fh + Ft, max width] zero-padded past each modality's width
    modality: tuple[str, ...]
    source: tuple[str, ...]


def collate(segments: list[Segment]) -> SegmentBatch:
    """Stack segments of equal latent shapes; actions are zero-padded to the widest modality in the batch."""
    if not segments:
        raise ValueError("collate needs at least one segment")
    shapes = {(tuple(s.history_latents.shape), tuple(s.target_latents.shape)) for s in segments}
    if len(shapes) > 1:
        raise ValueError(f"collate needs segments of one shape (draw one history length per batch), got {sorted(shapes)}")
    width = max(s.actions.shape[1] for s in segments)
    actions = torch.zeros(len(segments), segments[0].actions.shape[0], width)
    for row, segment in zip(actions, segments):
        row[:, : segment.actions.shape[1]] = segment.actions
    return SegmentBatch(
        history_latents=torch.stack([s.history_latents for s in segments]),
        target_latents=torch.stack([s.target_latents for s in segments]),
        actions=actions,
        modality=tuple(s.modality for s in segments),
        source=tuple(s.source for s in segments),
    )


class SegmentSampler:
    """Draws segments of one split with per-source weights (joint training over worlds / datasets).

    `weights` maps a source (world or dataset name) to its share; sources it does not name are not sampled.
    Without weights every clip is equally likely. All randomness comes from the given numpy Generator (or one
    seeded with `seed`), so the same seed gives the same segments.
    """

    def __init__(
        self,
        latent_dataset: LatentDataset,
        history_range: tuple[int, int],
        target_frames: int,
        weights: Mapping[str, float] | None = None,
        split: str = "train",
        seed: int = 0,
    ):
        low, high = history_range
        if not 1 <= low <= high or target_frames < 1:
            raise ValueError(f"need 1 <= history_range[0] <= history_range[1] and target_frames >= 1, got {history_range}, {target_frames}")
        self.dataset = latent_dataset
        self.target_frames = target_frames
        self.clips = [i for i, e in enumerate(latent_dataset.entries) if e["split"] == split and e["latent_frames"] >= low + target_frames]
        if not self.clips:
            raise DataError(f"{latent_dataset.root}: no {split!r} clip has {low + target_frames} latent frames (min history + target)")
        sources = {latent_dataset.entries[i]["source"] for i in self.clips}
        if weights is not None:
            unknown = set(weights) - sources
            if unknown:
                raise ValueError(f"weights name sources {sorted(unknown)} that have no usable {split!r} clips; sources: {sorted(sources)}")
            self.clips = [i for i in self.clips if weights.get(latent_dataset.entries[i]["source"], 0) > 0]
            if not self.clips:
                raise ValueError(f"weights {dict(weights)} give every source zero weight")
        self.weights = weights
        longest = max(latent_dataset.entries[i]["latent_frames"] for i in self.clips)
        self.history_range = (low, min(high, longest - target_frames))
        self.rng = np.random.default_rng(seed)
        self._draws: dict[int, tuple[list[int], np.ndarray]] = {}  # total frames -> (eligible clips, probabilities)

    def _clip_probabilities(self, clips: list[int]) -> np.ndarray:
        sources = [self.dataset.entries[i]["source"] for i in clips]
        if self.weights is None:
            return np.full(len(clips), 1.0 / len(clips))
        counts = {source: sources.count(source) for source in set(sources)}
        shares = np.array([self.weights[s] / counts[s] for s in sources])
        return shares / shares.sum()

    def sample_history_length(self, rng: np.random.Generator | None = None) -> int:
        low, high = self.history_range
        return int((rng or self.rng).integers(low, high + 1))

    def sample(self, history_frames: int | None = None, rng: np.random.Generator | None = None) -> Segment:
        """One segment: latents [0, Fh) as history, [Fh, Fh + Ft) as target, actions [0, Fh + Ft)."""
        rng = rng or self.rng
        history_frames = self.sample_history_length(rng) if history_frames is None else history_frames
        total = history_frames + self.target_frames
        if total not in self._draws:
            eligible = [i for i in self.clips if self.dataset.entries[i]["latent_frames"] >= total]
            if not eligible:
                raise ValueError(f"no clip has {total} latent frames (history {history_frames} + target {self.target_frames})")
            self._draws[total] = (eligible, self._clip_probabilities(eligible))
        eligible, probabilities = self._draws[total]
        clip = eligible[rng.choice(len(eligible), p=probabilities)]
        latents, actions = self.dataset.load_stored(clip)
        entry = self.dataset.entries[clip]
        if entry["modality"] not in MODALITIES:
            raise DataError(f"{self.dataset.root}: clip of {entry['episode']} has unknown modality {entry['modality']!r}")
        return Segment(  # float32 copies: the stored tensors stay untouched
            history_latents=latents[:, :history_frames].float(),
            target_latents=latents[:, history_frames:total].float(),
            actions=actions[:total].float(),
            modality=entry["modality"],
            source=entry["source"],
        )

    def batch(self, batch_size: int, rng: np.random.Generator | None = None) -> SegmentBatch:
        """`batch_size` segments sharing one history length, collated."""
        rng = rng or self.rng
        history_frames = self.sample_history_length(rng)
        return collate([self.sample(history_frames, rng) for _ in range(batch_size)])

    def __iter__(self) -> Iterator[Segment]:
        while True:
            yield self.sample()
