"""Episode format v1: one folder per episode, written atomically, validated on read.

Layout of `<root>/<name>/` (see docs/data-format.md):
    video.mp4      H.264 (libx264, yuv444p, crf 0: lossless in YUV, about 52 dB PSNR in RGB); `video.mkv`
                   (FFV1, exactly lossless RGB) when PyAV has no libx264. yuv420p was measured at 28-30 dB on
                   synthetic frames (chroma subsampling), below the 40 dB this format promises.
    actions.npy    float32 [T, A]  row t = input applied going from frame t to frame t+1
    poses.npy      float64 [T, 4, 4] camera-to-world, OpenCV camera axes (optional)
    controls.npy   float32 [T, K] the world's native controls (optional)
    meta.json      written last; its presence marks a complete episode

An episode is first written into `<root>/.<name>.tmp-<pid>/`, flushed to disk and renamed into place, so readers
never see half an episode; `list_episodes` ignores hidden folders and folders without meta.json, and the next
write of an episode removes what a killed writer of it left.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from astra.actions.modalities import MODALITIES
from astra.errors import DataError
from astra.files import TEMPORARY_MARK, remove_stale_temporaries, replace_folder

FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
META_FILE = "meta.json"
ACTIONS_FILE = "actions.npy"
POSES_FILE = "poses.npy"
CONTROLS_FILE = "controls.npy"


@dataclass(frozen=True)
class VideoCodec:
    """How frames are stored; both choices keep PSNR > 40 dB after the RGB round trip (checked in tests)."""

    name: str  # PyAV encoder name
    file: str
    pix_fmt: str
    options: dict[str, str]


H264 = VideoCodec("libx264", "video.mp4", "yuv444p", {"crf": "0", "preset": "medium", "g": "32"})
FFV1 = VideoCodec("ffv1", "video.mkv", "bgr0", {"g": "32"})
CODECS = {codec.name: codec for codec in (H264, FFV1)}


@dataclass
class Episode:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    actions: np.ndarray  # float32 [T, A] per-frame raw input of the modality
    modality: str  # a key of astra.actions.modalities.MODALITIES
    fps: float
    poses: np.ndarray | None = None  # float64 [T, 4, 4] camera-to-world (OpenCV camera axes)
    intrinsics: np.ndarray | None = None  # float64 [3, 3] in pixels of `frames`
    caption: str = ""
    split: str = "train"  # "train" or "heldout"
    controls: np.ndarray | None = None  # float32 [T, K] the world's native controls (for exact replay)
    meta: dict = field(default_factory=dict)  # world, map, seed, translation_scale, policy, ...

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _pyav():
    """PyAV, imported only where a video is read or written: training from latents needs no video library, and a
    GPU machine without network may not have one (scripts/gpu_train.sh)."""
    import av

    return av


def _codec_available(name: str) -> bool:
    av = _pyav()
    try:
        av.codec.Codec(name, "w")
    except (av.FFmpegError, ValueError):
        return False
    return True


def _choose_codec() -> VideoCodec:
    return H264 if _codec_available(H264.name) else FFV1


def _first_nonfinite_row(values: np.ndarray) -> int | None:
    bad = ~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _check_episode(episode: Episode, where: str) -> None:
    """Validate an in-memory episode before writing; every message names the field and the episode."""
    frames = episode.frames
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise DataError(f"{where}: frames must be uint8 [T, H, W, 3], got {got}")
    num_frames = frames.shape[0]
    if num_frames < 1:
        raise DataError(f"{where}: an episode needs at least one frame")
    if episode.modality not in MODALITIES:
        raise DataError(f"{where}: unknown modality {episode.modality!r}; known: {', '.join(MODALITIES)}")
    width = MODALITIES[episode.modality].width
    _check_rows(np.asarray(episode.actions), (num_frames, width), "actions", where)
    if episode.poses is not None:
        _check_rows(np.asarray(episode.poses), (num_frames, 4, 4), "poses", where)
    if episode.controls is not None:
        controls = np.asarray(episode.controls)
        if controls.ndim != 2 or controls.shape[0] != num_frames:
            raise DataError(f"{where}: controls must be [T={num_frames}, K], got {controls.shape}")
    if episode.intrinsics is not None and np.asarray(episode.intrinsics).shape != (3, 3):
        raise DataError(f"{where}: intrinsics must be 3x3, got {np.asarray(episode.intrinsics).shape}")
    if episode.split not in SPLITS:
        raise DataError(f"{where}: split must be one of {SPLITS}, got {episode.split!r}")
    if not (episode.fps > 0):
        raise DataError(f"{where}: fps must be positive, got {episode.fps}")


def _check_rows(values: np.ndarray, shape: tuple[int, ...], what: str, where: str) -> None:
    if values.shape != shape:
        raise DataError(f"{where}: {what} must have shape {list(shape)} (one row per frame), got {list(values.shape)}")
    if values.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} must hold real numbers, got dtype {values.dtype}")
    row = _first_nonfinite_row(values)
    if row is not None:
        raise DataError(f"{where}: {what} has a NaN or inf in row {row}")


def write_video(path: Path, frames: np.ndarray, fps: float, codec: VideoCodec) -> None:
    """uint8 [T, H, W, 3] frames -> a video file with `codec` (not atomic: callers write to a temp name)."""
    av = _pyav()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec.name, rate=rate, options=dict(codec.options))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = codec.pix_fmt
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_episode(root: str | os.PathLike, name: str, episode: Episode, overwrite: bool = False) -> Path:
    """Write `episode` to `<root>/<name>/` atomically and return that folder.

    An existing episode of the same name raises FileExistsError unless `overwrite` is set.
    """
    root = Path(root)
    if not name or "/" in name or name.startswith("."):
        raise DataError(f"episode name {name!r} must be a plain, non-hidden folder name")
    final = root / name
    _check_episode(episode, str(final))
    if final.exists() and not overwrite:
        raise FileExistsError(f"episode {final} already exists (pass overwrite=True to replace it)")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root, name)  # of a writer of this episode that was killed
    temp = root / f".{name}{TEMPORARY_MARK}{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir()
    try:
        num_frames, height, width = episode.frames.shape[:3]
        codec = _choose_codec()
        write_video(temp / codec.file, episode.frames, episode.fps, codec)
        np.save(temp / ACTIONS_FILE, np.asarray(episode.actions, dtype=np.float32))
        if episode.poses is not None:
            np.save(temp / POSES_FILE, np.asarray(episode.poses, dtype=np.float64))
        if episode.controls is not None:
            np.save(temp / CONTROLS_FILE, np.asarray(episode.controls, dtype=np.float32))
        meta = {
            "format_version": FORMAT_VERSION,
            "modality": episode.modality,
            "action_columns": list(MODALITIES[episode.modality].columns),
            "fps": float(episode.fps),
            "num_frames": int(num_frames),
            "height": int(height),
            "width": int(width),
            "intrinsics": None if episode.intrinsics is None else np.asarray(episode.intrinsics).tolist(),
            "caption": episode.caption,
            "split": episode.split,
            "video": {"file": codec.file, "codec": codec.name, "pix_fmt": codec.pix_fmt},
            "has_poses": episode.poses is not None,
            "has_controls": episode.controls is not None,
            "meta": episode.meta,
        }
        with open(temp / META_FILE, "w") as handle:
            json.dump(meta, handle, indent=2, default=_json_default)
        replace_folder(temp, final, overwrite)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def _json_default(value: Any) -> Any:
    """Let episode.meta hold numpy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"episode meta value of type {type(value).__name__} is not JSON serialisable")


def read_meta(path: str | os.PathLike) -> dict:
    """meta.json of an episode folder, checked for version, modality and the fields readers use (no video decode)."""
    file = Path(path) / META_FILE
    try:
        with open(file) as handle:
            meta = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{file}: missing; {Path(path)} is not a complete episode") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{file}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{file}: format_version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    if meta.get("modality") not in MODALITIES:
        raise DataError(f"{file}: unknown modality {meta.get('modality')!r}; known: {', '.join(MODALITIES)}")
    _check_meta_fields(meta, file)
    return meta


# The meta.json fields that readers use, with their JSON types (checked so that a hand-edited or foreign
# meta.json is a DataError naming the field, not a KeyError deep inside encode or info).
_META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "num_frames": int, "height": int, "width": int, "fps": (int, float), "caption": str, "split": str,
    "video": dict, "has_poses": bool, "has_controls": bool, "meta": dict,
}


def _check_meta_fields(meta: dict, file: Path) -> None:
    for key, kind in _META_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(f"{file}: field {key!r} missing or of the wrong type (got {value!r})")
    for key in ("num_frames", "height", "width", "fps"):
        if not meta[key] > 0:
            raise DataError(f"{file}: {key} must be positive, got {meta[key]}")
    if meta["split"] not in SPLITS:
        raise DataError(f"{file}: split must be one of {SPLITS}, got {meta['split']!r}")
    if not isinstance(meta["video"].get("file"), str):
        raise DataError(f"{file}: video.file missing (the name of the episode's video file)")
    intrinsics = meta.get("intrinsics", ())
    try:
        valid = intrinsics is None or np.asarray(intrinsics, dtype=np.float64).shape == (3, 3)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise DataError(f"{file}: intrinsics must be null or a 3x3 list of numbers, got {intrinsics!r}")


def _load_rows(file: Path, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    try:
        values = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{file}: cannot read ({error})") from None
    _check_rows(values, shape, file.stem, str(file))
    return values.astype(dtype, copy=False)


def read_frames(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames [start, stop) of an episode as uint8 [N, H, W, 3]; seeks to the nearest keyframe and stops early."""
    path = Path(path)
    meta = read_meta(path)
    num_frames = meta["num_frames"]
    stop = num_frames if stop is None else stop
    if not 0 <= start <= stop <= num_frames:
        raise DataError(f"{path}: frame range [{start}, {stop}) outside the episode's {num_frames} frames")
    video = path / meta["video"]["file"]
    frames = np.empty((stop - start, meta["height"], meta["width"], 3), np.uint8)
    if stop == start:
        return frames
    av = _pyav()
    rate = Fraction(meta["fps"]).limit_denominator(1001)
    filled = 0
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            if start > 0:
                container.seek(int(start / rate / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                index = round(frame.pts * stream.time_base * rate)
                if index < start:
                    continue
                if index >= stop:
                    break
                if (frame.height, frame.width) != frames.shape[1:3]:
                    raise DataError(
                        f"{video}: frames are {frame.height}x{frame.width}, meta.json says {meta['height']}x{meta['width']}"
                    )
                frames[index - start] = frame.to_ndarray(format="rgb24")
                filled += 1
    except (av.FFmpegError, OSError) as error:
        raise DataError(f"{video}: cannot decode ({error})") from None
    if filled != stop - start:
        raise DataError(
            f"{video}: truncated or corrupt video: decoded {filled} of frames [{start}, {stop}) "
            f"(meta.json says {num_frames} frames)"
        )
    return frames


def read_episode(path: str | os.PathLike) -> Episode:
    """Load and validate one episode folder; DataError names the file (and the row for NaNs)."""
    path = Path(path)
    meta = read_meta(path)
    num_frames = meta["num_frames"]
    width = MODALITIES[meta["modality"]].width
    actions = _load_rows(path / ACTIONS_FILE, (num_frames, width), np.float32)
    poses = _load_rows(path / POSES_FILE, (num_frames, 4, 4), np.float64) if meta["has_poses"] else None
    controls = None
    if meta["has_controls"]:
        try:
            controls = np.load(path / CONTROLS_FILE, allow_pickle=False).astype(np.float32, copy=False)
        except (OSError, ValueError, EOFError) as error:
            raise DataError(f"{path / CONTROLS_FILE}: cannot read ({error})") from None
        if controls.ndim != 2 or controls.shape[0] != num_frames:
            raise DataError(f"{path / CONTROLS_FILE}: expected [{num_frames}, K], got {list(controls.shape)}")
    intrinsics = None if meta["intrinsics"] is None else np.asarray(meta["intrinsics"], dtype=np.float64)
    return Episode(
        frames=read_frames(path),
        actions=actions,
        modality=meta["modality"],
        fps=meta["fps"],
        poses=poses,
        intrinsics=intrinsics,
        caption=meta["caption"],
        split=meta["split"],
        controls=controls,
        meta=meta["meta"],
    )


def list_episodes(root: str | os.PathLike, split: str | None = None) -> list[Path]:
    """Complete episode folders under `root` (searched recursively, hidden/temp folders skipped), sorted."""
    root = Path(root)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"episode folder {root} {problem}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if META_FILE in files:
            subfolders[:] = []  # an episode holds no nested episodes
            if split is None or read_meta(folder)["split"] == split:
                found.append(Path(folder))
    return sorted(found)
