"""Sekai (HF `Lixsp11/Sekai-Project`) -> one episode per clip (modality camera12).

A clip is `<clip>.mp4` + `<clip>.npz` side by side (the camera zips extract to flat `<subset>/` folders). The
npz key `extrinsic` holds one (4, 4) camera-to-world matrix per video frame in OpenCV axes, translations
normalised per video to |axis| <= 1; `intrinsic`, when present, is normalised by the image size. Annotation
CSVs `train/sekai-*.csv` (columns videoFile, cameraFile, caption, ...) give captions; without them every
npz/mp4 pair is a clip. Real-world videos are not shipped (they come from YouTube), so CSV rows whose files
are absent are skipped and reported.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from astra.data.adapters.common import (
    ConversionReport,
    Item,
    check_rows,
    clip_meta,
    episode_name,
    load_items,
    normalized_intrinsics,
    pose_episode,
    read_video,
    require_dir,
    skip_if_missing,
    split_for,
    strided_indices,
    video_info,
)
from astra.data.format import Episode
from astra.errors import DataError

DATASET = "sekai"
MODALITY = "camera12"
EXTRINSIC_KEY = "extrinsic"
INTRINSIC_KEY = "intrinsic"
# Astra used this fixed prompt for Sekai; pass default_caption=ASTRA_PROMPT to reproduce it.
ASTRA_PROMPT = "A video of a scene shot using a pedestrian's front camera while walking"


def list_items(source_dir: Path) -> list[Item]:
    """Clips from the annotation CSVs when present (with captions), else every npz that has a sibling mp4."""
    cameras = {path.name: path for path in sorted(source_dir.rglob("*.npz"))}
    videos = {path.name: path for path in sorted(source_dir.rglob("*.mp4"))}
    tables = sorted(source_dir.rglob("sekai-*.csv"))
    if not tables:
        return [
            Item(
                episode_name(DATASET, camera.parent.name, camera.stem),
                {"camera": camera, "video": camera.with_suffix(".mp4")},
            )
            for camera in cameras.values()
        ]
    items = []
    for table in tables:
        subset = table.stem.removeprefix("sekai-")
        with open(table, newline="") as handle:
            for row, record in enumerate(csv.DictReader(handle), start=2):
                video_file = record.get("videoFile")
                if not video_file:
                    raise DataError(f"{table}: line {row} has no videoFile")
                camera_file = record.get("cameraFile") or Path(video_file).with_suffix(".npz").name
                video_name, camera_name = Path(video_file).name, Path(camera_file).name
                paths = {
                    "camera": cameras.get(camera_name, source_dir / camera_name),
                    "video": videos.get(video_name, source_dir / video_name),
                }
                name = episode_name(DATASET, subset, Path(video_name).stem)
                items.append(Item(name, paths, {"caption": record.get("caption", ""), "csv": f"{table}:{row}"}))
    return items


def load_intrinsics(archive: np.lib.npyio.NpzFile, path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """Pixel intrinsics from the normalised `intrinsic` entry: a 3x3 matrix, one per frame, or (fx, fy, cx, cy)."""
    if INTRINSIC_KEY not in archive.files:
        return None
    values = np.asarray(archive[INTRINSIC_KEY], dtype=np.float64)
    if values.ndim == 3:
        values = values[0]
    if values.shape == (3, 3):
        values = np.array([values[0, 0], values[1, 1], values[0, 2], values[1, 2]])
    if values.shape != (4,) or not np.isfinite(values).all():
        raise DataError(f"{path}: '{INTRINSIC_KEY}' must be 3x3, [N, 3, 3] or [4], got shape {list(values.shape)}")
    return normalized_intrinsics(*values, size=size)


def load_episode(
    item: Item,
    frame_stride: int,
    max_frames: int | None,
    size: tuple[int, int] | None,
    default_caption: str,
    heldout_fraction: float,
) -> Episode:
    camera, video = item.paths["camera"], item.paths["video"]
    for path, what in ((camera, "camera npz"), (video, "video")):
        skip_if_missing(path, what, item.info.get("csv"))
    try:
        with np.load(camera, allow_pickle=False) as archive:
            if EXTRINSIC_KEY not in archive.files:
                raise DataError(f"{camera}: no '{EXTRINSIC_KEY}' entry (has {', '.join(archive.files)})")
            extrinsics = np.asarray(archive[EXTRINSIC_KEY], dtype=np.float64)
            check_rows(extrinsics, (4, 4), str(camera), f"'{EXTRINSIC_KEY}'")
            indices = strided_indices(len(extrinsics), frame_stride, max_frames)
            frames, source_size = read_video(video, indices, size)
            intrinsics = load_intrinsics(archive, camera, frames.shape[1:3])
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{camera}: cannot read ({error})") from None
    fps, _ = video_info(video)
    return pose_episode(
        frames,
        extrinsics[indices],
        MODALITY,
        fps=fps / frame_stride,
        intrinsics=intrinsics,
        caption=item.info.get("caption") or default_caption,
        split=split_for(item.name, heldout_fraction),
        meta=clip_meta(
            DATASET,
            indices,
            source_size,
            "c2w, OpenCV camera axes, translations normalised per video (|axis| <= 1)",
            clip=video.stem,
        ),
    )


def iter_episodes(
    source_dir: str | Path,
    frame_stride: int = 1,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    default_caption: str = "",
    heldout_fraction: float = 0.0,
    report: ConversionReport | None = None,
    skip_bad: bool = False,
    exclude: Iterable[str] = (),
) -> Iterator[Episode]:
    """One camera12 episode per Sekai clip under `source_dir` (CSV annotations + extracted camera zips)."""
    source_dir = require_dir(Path(source_dir), "Sekai")
    options = dict(frame_stride=frame_stride, max_frames=max_frames, size=size, heldout_fraction=heldout_fraction)
    options["default_caption"] = default_caption
    yield from load_items(DATASET, list_items(source_dir), load_episode, report, skip_bad, exclude, **options)
