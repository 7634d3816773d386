"""SpatialVID / SpatialVID-HQ (HF `SpatialVID/SpatialVID-HQ`) -> one episode per clip (modality camera7).

Layout (under `<root>` or `<root>/SpatialVid/HQ/`, where the tarballs extract):
    annotations/group_XXXX/<id>/{poses.npy, intrinsics.npy, caption.json, ...}
    videos/group_XXXX/<id>.mp4
    data/train/SpatialVID_HQ_metadata.csv (or SpatialVID_metadata.csv): id, video path, annotation path, fps, ...
`poses.npy` is [n, 7] (tx, ty, tz, qx, qy, qz, qw) for video frames 0, s, 2s, ... with s = int(fps / 5) (about
5 Hz), so an episode keeps exactly those frames, at fps / s. The pose convention is disputed: the dataset's
card and code say world-to-camera (OpenCV), Astra's maintainers say the data behaves as camera-to-world; the
default follows the card (`pose_convention="w2c"`), pass "c2w" for the other reading. `intrinsics.npy` is
[n, 4] (fx/W, fy/H, cx/W, cy/H). Caption = SceneSummary + " " + SceneDescription from caption.json.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from astra.actions.geometry import invert_pose, make_pose, quaternion_to_matrix
from astra.data.adapters.common import (
    ConversionReport,
    Item,
    SkipItem,
    clip_meta,
    episode_name,
    load_items,
    load_json,
    load_npy,
    normalized_intrinsics,
    pose_episode,
    read_video,
    require_dir,
    skip_if_missing,
    split_for,
    video_info,
)
from astra.data.format import Episode
from astra.errors import DataError

DATASET = "spatialvid"
MODALITY = "camera7"
POSE_RATE = 5  # poses are sampled every int(fps / POSE_RATE) video frames
POSE_CONVENTIONS = ("w2c", "c2w")
NESTED_ROOT = Path("SpatialVid") / "HQ"
METADATA_FILES = ("SpatialVID_HQ_metadata.csv", "SpatialVID_metadata.csv")
CAPTION_KEYS = ("SceneSummary", "SceneDescription")


def data_roots(source_dir: Path) -> list[Path]:
    return [root for root in (source_dir, source_dir / NESTED_ROOT) if root.is_dir()]


def _resolve(roots: list[Path], relative: str) -> Path:
    """The first root under which `relative` exists (else the path under the first root, reported missing later)."""
    for root in roots:
        if (root / relative).exists():
            return root / relative
    return roots[0] / relative


def list_items(source_dir: Path) -> list[Item]:
    """Clips from the metadata CSV when present, else every annotations/<group>/<id>/poses.npy."""
    roots = data_roots(source_dir)
    tables = [path for root in roots for name in METADATA_FILES for path in sorted(root.rglob(name))]
    if tables:
        items = []
        with open(tables[0], newline="") as handle:
            for row, record in enumerate(csv.DictReader(handle), start=2):
                missing = [key for key in ("id", "video path", "annotation path") if not record.get(key)]
                if missing:
                    raise DataError(f"{tables[0]}: line {row} has no {', '.join(missing)}")
                try:
                    fps = float(record["fps"]) if record.get("fps") else None
                except ValueError:
                    raise DataError(f"{tables[0]}: line {row} has a non-numeric fps {record['fps']!r}") from None
                paths = {
                    "video": _resolve(roots, record["video path"]),
                    "annotation": _resolve(roots, record["annotation path"]),
                }
                items.append(
                    Item(episode_name(DATASET, record["id"]), paths, {"fps": fps, "csv": f"{tables[0]}:{row}"})
                )
        return items
    items = []
    for root in roots:
        for poses in sorted(root.glob("annotations/*/*/poses.npy")):
            clip, group = poses.parent.name, poses.parent.parent.name
            paths = {"video": root / "videos" / group / f"{clip}.mp4", "annotation": poses.parent}
            items.append(Item(episode_name(DATASET, clip), paths, {"fps": None}))
    return items


def camera_to_world(poses: np.ndarray, convention: str) -> np.ndarray:
    """[n, 7] (t, qx, qy, qz, qw) rows -> [n, 4, 4] camera-to-world."""
    matrices = make_pose(quaternion_to_matrix(poses[:, 3:]), poses[:, :3])
    return invert_pose(matrices) if convention == "w2c" else matrices


def load_caption(annotation: Path) -> str:
    path = annotation / "caption.json"
    if not path.is_file():
        return ""
    captions = load_json(path)
    if not isinstance(captions, dict):
        raise DataError(f"{path}: expected a JSON object with {', '.join(CAPTION_KEYS)}")
    return " ".join(str(captions[key]).strip() for key in CAPTION_KEYS if captions.get(key))


def load_episode(
    item: Item,
    pose_convention: str,
    min_fps: float,
    max_frames: int | None,
    size: tuple[int, int] | None,
    heldout_fraction: float,
) -> Episode:
    annotation, video = item.paths["annotation"], item.paths["video"]
    skip_if_missing(video, "video")
    fps = item.info["fps"] or video_info(video)[0]
    if fps < min_fps:
        raise SkipItem(f"fps {fps} below min_fps={min_fps}")
    stride = max(int(fps / POSE_RATE), 1)
    poses = load_npy(annotation / "poses.npy", (7,), "poses [tx, ty, tz, qx, qy, qz, qw]")[:max_frames]
    if len(poses) < 2:
        raise SkipItem(f"{len(poses)} poses, need at least 2")
    if (np.linalg.norm(poses[:, 3:], axis=-1) == 0).any():
        row = int(np.argmax(np.linalg.norm(poses[:, 3:], axis=-1) == 0))
        raise DataError(f"{annotation / 'poses.npy'}: zero quaternion in row {row}")
    indices = [index * stride for index in range(len(poses))]
    frames, source_size = read_video(video, indices, size)
    intrinsics = None
    if (annotation / "intrinsics.npy").is_file():
        normalized = load_npy(annotation / "intrinsics.npy", (4,), "intrinsics [fx/W, fy/H, cx/W, cy/H]")
        if not len(normalized):
            raise DataError(f"{annotation / 'intrinsics.npy'}: no rows")
        intrinsics = normalized_intrinsics(*normalized[0], size=frames.shape[1:3])
    return pose_episode(
        frames,
        camera_to_world(poses, pose_convention),
        MODALITY,
        fps=fps / stride,
        intrinsics=intrinsics,
        caption=load_caption(annotation),
        split=split_for(item.name, heldout_fraction),
        meta=clip_meta(
            DATASET,
            indices,
            source_size,
            f"source read as {pose_convention}; stored c2w, OpenCV camera axes",
            clip=annotation.name,
            source_fps=fps,
        ),
    )


def iter_episodes(
    source_dir: str | Path,
    pose_convention: str = "w2c",
    min_fps: float = 0.0,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    heldout_fraction: float = 0.0,
    report: ConversionReport | None = None,
    skip_bad: bool = False,
    exclude: Iterable[str] = (),
) -> Iterator[Episode]:
    """One camera7 episode per SpatialVID clip; frames are the pose-sampled ones (about 5 fps).

    `max_frames` counts poses (= episode frames). Astra kept clips with fps >= 25 (`min_fps=25`).
    """
    if pose_convention not in POSE_CONVENTIONS:
        raise ValueError(f"pose_convention must be one of {POSE_CONVENTIONS}, got {pose_convention!r}")
    source_dir = require_dir(Path(source_dir), "SpatialVID")
    options = dict(pose_convention=pose_convention, min_fps=min_fps, max_frames=max_frames, size=size)
    options["heldout_fraction"] = heldout_fraction
    yield from load_items(DATASET, list_items(source_dir), load_episode, report, skip_bad, exclude, **options)
