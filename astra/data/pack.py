"""Latent packs: an encoded dataset in one small file, for machines that only take a few tens of MB along.

Why: a lent GPU machine receives the working tree and at most 64 MiB with it and cannot reach the network, while the
shipped model's latents are 306 MB (float16). A pack quantises each latent channel uniformly to `bits` over its mean
+- `clip_std` standard deviations (of the packed clips), keeps the actions exact, and compresses the lot with xz;
at 6 bits the latents shrink ~8x (their quantisation error stays ~27 dB below their power, far under the VAE's own
reconstruction error). `unpack_latents` writes an ordinary latent folder (index.json + float16 shards), so training
reads it as it reads `astra data encode`'s output. A pack can be split into parts that each hold every n-th clip
(an even sample of the whole) and are unpacked together. Packing cannot recover what quantisation lost: pack for
moving data, keep the encoded folder as the original.

File layout: `PACK_MAGIC`, then one xz stream holding a safetensors blob: per clip `<i>.latents` (uint8 codes
[F, h, w, C]: channels last compress 8-16 % better than the latents' own [C, F, h, w]) and `<i>.actions` (float32
[F, width]), and `offset` / `step` (float32 [C]: value = offset + code * step); its metadata's "pack" entry is JSON:
format version, bits, the VAE, [part, parts] and the index entries of the clips.
"""

from __future__ import annotations

import json
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors
from safetensors.torch import save_file
from tqdm import tqdm

from astra.data.encode import INDEX_FILE, LATENT_FORMAT_VERSION, write_json_atomic
from astra.data.sampler import LatentDataset
from astra.errors import DataError
from astra.files import atomic_path

PACK_MAGIC = b"ASTRA-LATENT-PACK\n"
PACK_FORMAT_VERSION = 1
DEFAULT_BITS = 6
DEFAULT_CLIP_STD = 4.0  # codes span mean +- this many standard deviations per channel; beyond is clipped
XZ_PRESET = 6  # lzma's default: preset 9 was 1 % smaller and 2x slower on the shipped latents
UNPACK_SHARD_SIZE = 64  # clips per shard `unpack_latents` writes (`astra data encode`'s default)


@dataclass
class PackReport:
    clips: int
    latent_values: int
    bytes: int
    snr_db: float  # latent power over quantisation error power, in dB (all channels pooled)
    clipped_fraction: float  # values beyond mean +- clip_std std, set to the edge code

    def summary(self) -> str:
        return (
            f"{self.clips} clips, {self.latent_values:,} latent values -> {self.bytes / 1e6:.1f} MB "
            f"({8 * self.bytes / max(self.latent_values, 1):.2f} bits per value), quantisation SNR {self.snr_db:.1f} dB, "
            f"{100 * self.clipped_fraction:.3f} % clipped"
        )


def select_entries(dataset: LatentDataset, split: str | None, per_source: dict[str, int] | None) -> list[int]:
    """Indices of the clips to pack: those of `split` (None: every split), and of each source named in
    `per_source` at most that many episodes, spread evenly over the source's episodes in index order (sources not
    named are packed whole; a count of 0 leaves a source out)."""
    chosen = [i for i, entry in enumerate(dataset.entries) if split is None or entry["split"] == split]
    if not chosen:
        raise DataError(f"{dataset.root}: no clips of split {split!r}")
    known = {dataset.entries[i]["source"] for i in chosen}
    unknown = sorted(set(per_source or {}) - known)
    if unknown:
        raise DataError(f"{dataset.root}: no source {unknown} among the clips to pack (there are {sorted(known)})")
    keep: dict[str, set[str]] = {}
    for source, count in (per_source or {}).items():
        if count < 0:
            raise DataError(f"episodes of {source!r}: the count must be 0 or more, got {count}")
        of_source = (dataset.entries[i] for i in chosen if dataset.entries[i]["source"] == source)
        episodes = list(dict.fromkeys(entry["episode"] for entry in of_source))
        picks = np.linspace(0, len(episodes), num=min(count, len(episodes)), endpoint=False).astype(int)
        keep[source] = {episodes[p] for p in picks}
    sources_and_episodes = ((i, dataset.entries[i]["source"], dataset.entries[i]["episode"]) for i in chosen)
    return [i for i, source, episode in sources_and_episodes if source not in keep or episode in keep[source]]


def channel_ranges(latents: list[np.ndarray], bits: int, clip_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (offset, step) of the uniform code: 2**bits levels over mean +- clip_std std."""
    channels = latents[0].shape[0]
    sums, squares, count = np.zeros(channels), np.zeros(channels), 0
    for clip in latents:
        values = clip.reshape(channels, -1).astype(np.float64)
        sums += values.sum(axis=1)
        squares += (values**2).sum(axis=1)
        count += values.shape[1]
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    low = mean - clip_std * std
    step = 2 * clip_std * std / (2**bits - 1)
    return low.astype(np.float32), step.astype(np.float32)


def quantise(latents: np.ndarray, offset: np.ndarray, step: np.ndarray, bits: int) -> np.ndarray:
    shape = (-1,) + (1,) * (latents.ndim - 1)
    codes = np.rint((latents - offset.reshape(shape)) / step.reshape(shape))
    return np.clip(codes, 0, 2**bits - 1).astype(np.uint8)


def dequantise(codes: np.ndarray, offset: np.ndarray, step: np.ndarray) -> np.ndarray:
    shape = (-1,) + (1,) * (codes.ndim - 1)
    return offset.reshape(shape) + codes.astype(np.float32) * step.reshape(shape)


def part_paths(out: str | Path, parts: int) -> list[Path]:
    """The files of a pack split in `parts`: `out` itself, or `<stem>-1of2<suffix>`, `<stem>-2of2<suffix>`, ..."""
    out = Path(out)
    if parts == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{k}of{parts}{out.suffix}") for k in range(1, parts + 1)]


def pack_latents(
    latents_dir: str | Path,
    out: str | Path,
    split: str | None = "train",
    per_source: dict[str, int] | None = None,
    bits: int = DEFAULT_BITS,
    clip_std: float = DEFAULT_CLIP_STD,
    parts: int = 1,
    progress: bool = True,
) -> PackReport:
    """Write the chosen clips of an encoded latent folder into one pack file `out`, or into `parts` files
    (`part_paths`) that each hold every parts-th clip, so each alone is an even sample of the whole (a machine that
    takes 64 MiB per call can receive them in turns). Every file is written atomically; the report sums them."""
    if not 1 <= bits <= 8:
        raise DataError(f"bits must be 1 to 8 (one byte per code), got {bits}")
    if not clip_std > 0:
        raise DataError(f"clip_std must be positive, got {clip_std}")
    dataset = LatentDataset(latents_dir, cache_bytes=0)  # every clip is read once
    indices = select_entries(dataset, split, per_source)
    if not 1 <= parts <= len(indices):
        raise DataError(f"parts must be 1 to the number of clips ({len(indices)}), got {parts}")
    loaded = [dataset.load(i) for i in tqdm(indices, desc="read", unit="clip", disable=not progress)]
    latents = [clip.numpy() for clip, _ in loaded]
    offset, step = channel_ranges(latents, bits, clip_std)  # one code for all parts
    signal, error, clipped, values, size = 0.0, 0.0, 0, 0, 0
    for part, path in enumerate(part_paths(out, parts)):
        tensors: dict[str, np.ndarray] = {"offset": offset, "step": step}
        entries = []
        for number in range(part, len(indices), parts):
            clip, actions = latents[number], loaded[number][1]
            codes = quantise(clip, offset, step, bits)
            restored = dequantise(codes, offset, step)
            signal += float(np.square(clip.astype(np.float64)).sum())
            error += float(np.square(restored.astype(np.float64) - clip).sum())
            edge = (codes == 0) | (codes == 2**bits - 1)
            clipped += int((edge & (np.abs(restored - clip) > step.reshape(-1, 1, 1, 1) / 2 + 1e-6)).sum())
            values += clip.size
            key = str(len(entries))
            tensors[f"{key}.latents"] = np.ascontiguousarray(codes.transpose(1, 2, 3, 0))
            tensors[f"{key}.actions"] = actions.numpy().astype(np.float32)
            entries.append({**dataset.entries[indices[number]], "key": key})
            entries[-1].pop("shard")
        header = {"format_version": PACK_FORMAT_VERSION, "bits": bits, "clip_std": clip_std, "vae": dataset.vae,
                  "part": [part + 1, parts], "entries": entries}  # fmt: skip
        blob = save_safetensors(tensors, metadata={"pack": json.dumps(header)})
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            with open(temporary, "wb") as handle:
                handle.write(PACK_MAGIC)
                handle.write(lzma.compress(blob, preset=XZ_PRESET))
        size += path.stat().st_size
    snr = 10 * np.log10(signal / error) if error > 0 else float("inf")
    return PackReport(len(indices), values, size, float(snr), clipped / max(values, 1))


def read_pack(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(header, tensors) of a pack file, checked: every listed clip has its codes and actions with the index's
    frame count, nothing else is in it, and the codes fit the header's bits. Errors name the file and the clip."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such pack file") from None
    except OSError as error:
        raise DataError(f"{path}: unreadable ({error})") from None
    if not raw.startswith(PACK_MAGIC):
        raise DataError(f"{path}: not a latent pack (it does not start with {PACK_MAGIC!r}); make one with `astra data pack`")
    try:
        blob = lzma.decompress(raw[len(PACK_MAGIC) :])
        tensors = load_safetensors(blob)
        header = json.loads(_safetensors_metadata(blob)["pack"])
    except (lzma.LZMAError, SafetensorError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: truncated or corrupt pack ({type(error).__name__}: {error})") from None
    if not isinstance(header, dict) or header.get("format_version") != PACK_FORMAT_VERSION:
        version = header.get("format_version") if isinstance(header, dict) else None
        raise DataError(f"{path}: pack format_version {version!r}, expected {PACK_FORMAT_VERSION}")
    bits = header.get("bits")
    if not isinstance(bits, int) or not 1 <= bits <= 8 or not isinstance(header.get("entries"), list):
        raise DataError(f"{path}: the pack header needs 'bits' (1-8) and a list of 'entries'")
    expected = {"offset", "step"}
    for number, entry in enumerate(header["entries"]):
        where = f"{path}: entries[{number}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("latent_frames"), int):
            raise DataError(f"{where}: not an index entry with 'latent_frames'")
        key = entry.get("key")
        codes, actions = tensors.get(f"{key}.latents"), tensors.get(f"{key}.actions")
        if codes is None or actions is None:
            raise DataError(f"{where}: the pack has no codes or actions for clip key {key!r}")
        if codes.dtype != np.uint8 or codes.ndim != 4 or codes.shape[0] != entry["latent_frames"]:
            raise DataError(f"{where}: codes {codes.dtype} {list(codes.shape)} are not uint8 [{entry['latent_frames']}, h, w, C]")
        if actions.ndim != 2 or actions.shape[0] != entry["latent_frames"]:
            raise DataError(f"{where}: actions {list(actions.shape)} do not have {entry['latent_frames']} rows")
        if int(codes.max(initial=0)) >= 2**bits:
            raise DataError(f"{where}: a code exceeds {bits} bits")
        expected |= {f"{key}.latents", f"{key}.actions"}
    unexpected = sorted(set(tensors) - expected)
    missing = sorted({"offset", "step"} - set(tensors))
    if unexpected or missing:
        raise DataError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected[:8]}")
    channels = tensors["offset"].shape
    if tensors["step"].shape != channels or any(tensors[f"{e['key']}.latents"].shape[-1] != channels[0] for e in header["entries"]):
        raise DataError(f"{path}: offset / step do not have one value per latent channel")
    return header, tensors


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob (8-byte little-endian header length, then the JSON header)."""
    length = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + length].decode("utf-8")).get("__metadata__") or {}


def unpack_latents(packs: str | Path | list[str | Path], out: str | Path, progress: bool = True) -> int:
    """Write the clips of one or more packs (e.g. the parts of one) as one encoded latent folder (float16 shards,
    index.json last); returns the clip count. Refuses a folder that already holds an index, so no dataset is
    overwritten, and packs of different VAEs or that repeat an episode's clip."""
    paths = [Path(p) for p in (packs if isinstance(packs, list) else [packs])]
    if not paths:
        raise DataError("unpack needs at least one pack file")
    out = Path(out)
    if (out / INDEX_FILE).exists():
        raise DataError(f"{out}: already holds a latent dataset ({INDEX_FILE}); unpack into an empty folder")
    contents = [read_pack(path) for path in paths]  # all checked before anything is written
    vaes = {header.get("vae") for header, _ in contents}
    if len(vaes) > 1:
        raise DataError(f"the packs were encoded with different VAEs: {sorted(map(str, vaes))}")
    seen: dict[tuple, Path] = {}
    for path, (header, _) in zip(paths, contents):
        for entry in header["entries"]:
            clip = (entry.get("episode"), tuple(entry.get("frame_range") or ()))
            if clip in seen:
                raise DataError(f"{path}: clip {clip[0]} {list(clip[1])} is also in {seen[clip]}")
            seen[clip] = path
    out.mkdir(parents=True, exist_ok=True)
    index_entries = []
    for number, (header, tensors) in enumerate(contents):
        offset, step, entries = tensors["offset"], tensors["step"], header["entries"]
        starts = range(0, len(entries), UNPACK_SHARD_SIZE)
        for shard_number, start in enumerate(tqdm(starts, desc=f"unpack {paths[number].name}", unit="shard", disable=not progress)):
            shard = f"shard-unpacked-{number}-{shard_number:05d}.safetensors"
            shard_tensors = {}
            for entry in entries[start : start + UNPACK_SHARD_SIZE]:
                key = entry["key"]
                latents = dequantise(tensors[f"{key}.latents"].transpose(3, 0, 1, 2), offset, step)
                shard_tensors[f"{key}.latents"] = torch.from_numpy(np.ascontiguousarray(latents)).to(torch.float16)
                shard_tensors[f"{key}.actions"] = torch.from_numpy(np.ascontiguousarray(tensors[f"{key}.actions"]))
                index_entries.append({**entry, "shard": shard})
            with atomic_path(out / shard) as temporary:
                save_file(shard_tensors, str(temporary))
    index = {"format_version": LATENT_FORMAT_VERSION, "vae": next(iter(vaes)), "entries": index_entries}
    write_json_atomic(out / INDEX_FILE, index)
    return len(index_entries)
