"""What every dataset adapter shares: media decoding, pose -> per-frame action rows, skip reporting, splits.

An adapter lists its items cheaply (`Item`: a name plus whatever paths it needs), then loads one item at a
time into an `Episode`. `iterate_items` runs that loop for all adapters: items that fail to load raise a
`DataError` (or, with `skip_bad=True`, are skipped), filtered items raise `SkipItem`, and every skipped item
is recorded in a `ConversionReport` with its reason, so nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from astra.actions.align import POSE_MODALITIES
from astra.actions.geometry import pose_to_vector7, pose_to_vector12, relative_pose
from astra.data.format import Episode
from astra.errors import DataError
from astra.files import atomic_write_text
from astra.images import to_rgb

logger = logging.getLogger("astra.data.adapters")

# Below this median step length (in the dataset's units) a trajectory counts as static and the scale is 1.
MIN_SCALE = 1e-6


@dataclass
class Item:
    """One future episode: a unique name (also its folder name) and what the adapter needs to load it."""

    name: str
    paths: dict[str, Path] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


class SkipItem(Exception):
    """Raised by an adapter's loader for an item that is valid but filtered out (too short, no video, ...)."""


@dataclass
class ConversionReport:
    """Counts of converted and skipped items; skipped ones keep their reason (shown and saved as JSON)."""

    dataset: str
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # item name -> reason

    def skip(self, name: str, reason: str) -> None:
        logger.warning("%s: skipped %s: %s", self.dataset, name, reason)
        self.skipped[name] = reason

    def summary(self) -> str:
        return f"{self.dataset}: {len(self.converted)} episodes converted, {len(self.skipped)} items skipped"

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "converted": self.converted, "skipped": self.skipped}

    def save(self, path: Path) -> None:
        """Atomic JSON write (temp name in the same folder, then rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))


def iterate_items(
    items: Iterable[Item],
    load: Callable[[Item], Episode],
    report: ConversionReport,
    skip_bad: bool = False,
    exclude: Iterable[str] = (),
) -> Iterator[Episode]:
    """Load each item not in `exclude`. Filtered items (SkipItem) are always reported and skipped; bad items
    (DataError) raise, or with `skip_bad` are reported and skipped too."""
    exclude = set(exclude)
    for item in items:
        if item.name in exclude:
            continue
        try:
            episode = load(item)
        except SkipItem as reason:
            report.skip(item.name, str(reason))
            continue
        except DataError as error:
            if not skip_bad:
                raise
            report.skip(item.name, str(error))
            continue
        episode.meta.setdefault("name", item.name)
        report.converted.append(item.name)
        yield episode


def load_items(
    dataset: str,
    items: Iterable[Item],
    load_episode: Callable[..., Episode],
    report: ConversionReport | None,
    skip_bad: bool,
    exclude: Iterable[str],
    **options: Any,
) -> Iterator[Episode]:
    """An adapter's `iter_episodes` loop: `iterate_items` with `load_episode(item, **options)`, reporting into
    `report` (a fresh one for `dataset` when None)."""
    load = partial(load_episode, **options)
    return iterate_items(items, load, report or ConversionReport(dataset), skip_bad, exclude)


def episode_name(dataset: str, *parts: str) -> str:
    """A folder-safe unique episode name such as `sekai-walking-00001`."""
    text = "-".join((dataset, *parts))
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).lstrip(".")


def split_for(name: str, heldout_fraction: float) -> str:
    """Deterministic split from a hash of the episode name, so re-conversions agree."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    bucket = zlib.crc32(name.encode()) % 10_000
    return "heldout" if bucket < heldout_fraction * 10_000 else "train"


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: missing {what}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """The dataset folder an adapter was pointed at; DataError when it is not there."""
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")
    return path


def skip_if_missing(path: Path, what: str, listed_in: str | None = None) -> None:
    """SkipItem for a file that the listing names but the download lacks (e.g. videos not shipped)."""
    if not path.is_file():
        raise SkipItem(f"{what} {path} not present" + (f" (listed in {listed_in})" if listed_in else ""))


def load_json(path: Path) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def load_npy(path: Path, shape_tail: tuple[int, ...], what: str) -> np.ndarray:
    """A float array [N, *shape_tail] with every row finite; DataError names the file and the bad row."""
    try:
        values = np.load(require_file(path, what), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: cannot read {what} ({error})") from None
    check_rows(values, shape_tail, str(path), what)
    return values.astype(np.float64)


def check_rows(values: np.ndarray, shape_tail: tuple[int, ...], where: str, what: str) -> None:
    if values.ndim != 1 + len(shape_tail) or tuple(values.shape[1:]) != shape_tail:
        raise DataError(
            f"{where}: {what} must have shape [N, {', '.join(map(str, shape_tail))}], got {list(values.shape)}"
        )
    if values.dtype.kind not in "biuf":
        raise DataError(f"{where}: {what} must hold real numbers, got dtype {values.dtype}")
    bad = ~np.isfinite(values).all(axis=tuple(range(1, values.ndim)))  # (no reshape: it fails on 0 rows)
    if bad.any():
        raise DataError(f"{where}: {what} has a NaN or inf in row {int(np.argmax(bad))}")


# ----------------------------------------------------------------------------- media


def read_video(
    path: Path, frame_indices: list[int] | None = None, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode the chosen frames (all when None) as uint8 [N, H, W, 3], resized to `size` = (height, width).

    Returns the frames and the source (height, width), for rescaling intrinsics. Decoding stops after the
    last wanted frame; a video shorter than asked raises a DataError naming the file.
    """
    require_file(path, "video")
    wanted = None if frame_indices is None else {index: slot for slot, index in enumerate(frame_indices)}
    last = None if frame_indices is None else max(frame_indices, default=-1)
    frames: list[np.ndarray | None] = [] if wanted is None else [None] * len(frame_indices)
    source_size, decoded = (0, 0), 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            source_size = (stream.codec_context.height, stream.codec_context.width)
            for index, frame in enumerate(container.decode(stream)):
                if last is not None and index > last:
                    break
                decoded = index + 1
                if wanted is not None and index not in wanted:
                    continue
                if size is not None:
                    frame = frame.reformat(width=size[1], height=size[0])
                rgb = frame.to_ndarray(format="rgb24")
                if wanted is None:
                    frames.append(rgb)
                else:
                    frames[wanted[index]] = rgb
    except (av.FFmpegError, OSError, IndexError) as error:
        raise DataError(f"{path}: cannot decode video ({error})") from None
    missing = [index for index, slot in (wanted or {}).items() if frames[slot] is None]
    if missing:
        raise DataError(f"{path}: video too short: frame {max(missing)} requested, {decoded} decoded")
    if not frames:
        raise DataError(f"{path}: video has no frames")
    return np.stack(frames), source_size


def video_info(path: Path) -> tuple[float, int]:
    """(fps, frame count) from the container header (count may be 0 when the header does not say)."""
    try:
        with av.open(str(require_file(path, "video"))) as container:
            stream = container.streams.video[0]
            return float(stream.average_rate or stream.guessed_rate or 0), int(stream.frames)
    except (av.FFmpegError, OSError, IndexError) as error:
        raise DataError(f"{path}: cannot open video ({error})") from None


def read_images(paths: list[Path], size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Image files as uint8 [N, H, W, 3] (resized to (height, width) when given) and the source size."""
    frames, source_size = [], None
    for path in paths:
        try:
            with Image.open(require_file(path, "image")) as image:
                image = to_rgb(image)
                if source_size is None:
                    source_size = (image.height, image.width)
                if (image.height, image.width) != source_size:
                    raise DataError(f"{path}: size {image.width}x{image.height} differs from the first image's")
                if size is not None:
                    image = image.resize((size[1], size[0]), Image.BILINEAR)
                frames.append(np.asarray(image, dtype=np.uint8))
        except OSError as error:
            raise DataError(f"{path}: cannot read image ({error})") from None
    return np.stack(frames), source_size


def scale_intrinsics(intrinsics: np.ndarray, source_size: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Pixel intrinsics of a (height, width) image after resizing it to `size`."""
    scaled = np.array(intrinsics, dtype=np.float64)
    scaled[0] *= size[1] / source_size[1]
    scaled[1] *= size[0] / source_size[0]
    return scaled


def normalized_intrinsics(fx: float, fy: float, cx: float, cy: float, size: tuple[int, int]) -> np.ndarray:
    """3x3 pixel intrinsics from values normalised by the image width (x) and height (y)."""
    height, width = size
    return np.array([[fx * width, 0.0, cx * width], [0.0, fy * height, cy * height], [0.0, 0.0, 1.0]])


def strided_indices(count: int, frame_stride: int, max_frames: int | None) -> list[int]:
    """Source frame indices 0, s, 2s, ... below `count` (s = `frame_stride`), at most `max_frames` of them."""
    return list(range(0, count, frame_stride))[:max_frames]


def clip_meta(
    dataset: str, indices: list[int], source_size: tuple[int, int], pose_convention: str, **details: Any
) -> dict[str, Any]:
    """Episode meta of a clip cut from a source video: the dataset, adapter-specific `details`, which source
    frames were kept, their size before resizing and how the poses were read."""
    return {
        "dataset": dataset,
        **details,
        "source_frame_indices": indices,
        "source_size": list(source_size),
        "pose_convention": pose_convention,
    }


# ----------------------------------------------------------------------------- geometry


def step_motions(poses: np.ndarray) -> np.ndarray:
    """Relative motion frame t -> t+1 in frame t's camera: inv(P[t]) @ P[t+1], [T-1, 4, 4]."""
    return relative_pose(poses[:-1], poses[1:])


def median_step(steps: np.ndarray) -> float:
    """Median length of per-frame steps [N, D] (a typical step becomes ~1); 1.0 when (nearly) static or empty."""
    scale = float(np.median(np.linalg.norm(steps, axis=-1))) if len(steps) else 0.0
    return scale if scale > MIN_SCALE else 1.0


def translation_scale(poses: np.ndarray) -> float:
    """The median per-frame camera translation in the dataset's units (see median_step)."""
    return median_step(step_motions(poses)[:, :3, 3]) if len(poses) > 1 else 1.0


def pose_action_rows(poses: np.ndarray, modality: str, scale: float) -> np.ndarray:
    """Per-frame action rows float32 [T, width] of a pose modality from camera-to-world poses [T, 4, 4].

    Row t is the motion from frame t to t+1 in frame t's camera, translation divided by `scale`:
    camera7/vehicle7 = [t, qx, qy, qz, qw], camera12 = [R | t] row-major. The last row (no next frame) is
    the identity motion.
    """
    if modality not in POSE_MODALITIES:
        raise ValueError(f"modality {modality!r} is not pose-derived; pose modalities: {', '.join(POSE_MODALITIES)}")
    motions = np.concatenate([step_motions(poses), np.eye(4)[None]], axis=0)
    to_vector = pose_to_vector12 if modality == "camera12" else pose_to_vector7
    return to_vector(motions, scale).astype(np.float32)


def pose_episode(
    frames: np.ndarray,
    poses: np.ndarray,
    modality: str,
    fps: float,
    intrinsics: np.ndarray | None,
    caption: str,
    split: str,
    meta: dict[str, Any],
) -> Episode:
    """An Episode whose actions come from its poses, with `translation_scale` estimated and stored in meta."""
    scale = translation_scale(poses)
    return Episode(
        frames=frames,
        actions=pose_action_rows(poses, modality, scale),
        modality=modality,
        fps=float(fps),
        poses=poses,
        intrinsics=intrinsics,
        caption=caption,
        split=split,
        meta={**meta, "translation_scale": scale},
    )
