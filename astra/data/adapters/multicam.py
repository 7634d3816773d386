"""MultiCamVideo-Dataset (HF `KwaiVGI/MultiCamVideo-Dataset`) -> one episode per (scene, camera) (modality camera7).

Layout: `train/f<mm>_aperture<a>/scene<k>/{videos/cam01..10.mp4, cameras/camera_extrinsics.json}` and
`val/10basic_trajectories/...` (81 frames, 15 fps). The JSON maps "frame<i>" -> "cam<j>" -> a string of four
bracketed rows "[r00 r01 r02 0] ... [tx ty tz 1]": an Unreal Engine row-vector matrix in centimetres. As in
ReCamMaster: transpose (translation into column 3), reorder the camera axes (UE forward, right, up) into OpenCV
(right, down, forward), and convert to metres. UE's world is left-handed, which leaves det(R) = -1; mirroring
the world's y axis makes every pose a proper rigid transform and leaves all relative camera motions unchanged.
Intrinsics come from the folder's focal length on the 23.76 mm square sensor. Captions are not shipped; a
`metadata.csv` (file_name relative to train/, text) is used when present.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from astra.data.adapters.common import (
    ConversionReport,
    Item,
    SkipItem,
    clip_meta,
    episode_name,
    load_items,
    load_json,
    pose_episode,
    read_video,
    require_dir,
    split_for,
    strided_indices,
    video_info,
)
from astra.data.format import Episode
from astra.errors import DataError

DATASET = "multicam"
MODALITY = "camera7"
EXTRINSICS = Path("cameras") / "camera_extrinsics.json"
SENSOR_WIDTH_MM = 23.76
CENTIMETRES_PER_METRE = 100.0
FOCAL_PATTERN = re.compile(r"^f(\d+(?:\.\d+)?)_aperture")
UE_TO_OPENCV_AXES = [1, 2, 0, 3]  # columns (forward, right, up, t) -> (right, up, forward, t); then up -> down
MIRROR_WORLD_Y = np.diag([1.0, -1.0, 1.0, 1.0])


def parse_matrix(text: str, where: str) -> np.ndarray:
    """'[a b c 0] [d e f 0] [g h i 0] [x y z 1] ' -> 4x4 (rows of 3 values are padded with 0, or 1 for row 3)."""
    if not isinstance(text, str):
        raise DataError(f"{where}: expected a matrix string, got {type(text).__name__} {text!r}")
    rows = text.strip().strip("[]").split("] [")
    try:
        values = [[float(token) for token in row.split()] for row in rows]
    except ValueError:
        raise DataError(f"{where}: not a matrix string: {text!r}") from None
    if len(values) != 4 or any(len(row) not in (3, 4) for row in values):
        raise DataError(f"{where}: expected 4 bracketed rows of 3 or 4 numbers, got {text!r}")
    return np.array([row + [1.0 if index == 3 else 0.0] * (4 - len(row)) for index, row in enumerate(values)])


def ue_to_camera_to_world(matrix: np.ndarray) -> np.ndarray:
    """UE row-vector camera matrix (cm) -> camera-to-world with OpenCV camera axes in a right-handed world (m)."""
    pose = matrix.T[:, UE_TO_OPENCV_AXES]
    pose[:3, 1] *= -1
    pose[:3, 3] /= CENTIMETRES_PER_METRE
    return MIRROR_WORLD_Y @ pose


def load_poses(path: Path, camera: str) -> np.ndarray:
    """[T, 4, 4] camera-to-world of one camera, frames ordered by their index ("frame0", "frame1", ...)."""
    table = load_json(path)
    if not isinstance(table, dict) or not table:
        raise DataError(f"{path}: expected an object {{'frame0': {{'cam01': '[...]', ...}}, ...}}")
    try:
        keys = sorted(table, key=lambda key: int(key.removeprefix("frame")))
    except ValueError:
        raise DataError(f"{path}: keys must be 'frame<i>', got {sorted(table)[:3]}") from None
    poses = []
    for key in keys:
        if not isinstance(table[key], dict):
            raise DataError(f"{path}: {key} must map camera names to matrix strings, got {type(table[key]).__name__}")
        if camera not in table[key]:
            raise DataError(f"{path}: {key} has no entry for {camera}")
        pose = ue_to_camera_to_world(parse_matrix(table[key][camera], f"{path} {key}/{camera}"))
        if abs(np.linalg.det(pose[:3, :3]) - 1.0) > 1e-3:
            raise DataError(
                f"{path} {key}/{camera}: rotation block is not a rotation (det {np.linalg.det(pose[:3, :3]):.3f})"
            )
        poses.append(pose)
    return np.stack(poses)


def load_captions(source_dir: Path) -> dict[str, str]:
    """metadata.csv (file_name relative to train/, text) if someone wrote one; keys without extension too."""
    path = source_dir / "metadata.csv"
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as handle:
            return {
                record["file_name"]: record.get("text") or ""
                for record in csv.DictReader(handle)
                if record.get("file_name")
            }
    except (csv.Error, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV ({error})") from None


def list_items(source_dir: Path) -> list[Item]:
    captions = load_captions(source_dir)
    items = []
    for extrinsics in sorted(source_dir.rglob(str(EXTRINSICS))):
        scene = extrinsics.parent.parent
        relative = scene.relative_to(source_dir)
        train_relative = relative.relative_to("train") if relative.parts[:1] == ("train",) else relative
        for video in sorted((scene / "videos").glob("cam*.mp4")):
            caption = captions.get(str(train_relative / "videos" / video.name), captions.get(str(train_relative), ""))
            items.append(
                Item(
                    episode_name(DATASET, *relative.parts, video.stem),
                    {"video": video, "extrinsics": extrinsics},
                    {
                        "camera": video.stem,
                        "caption": caption,
                        "focal_folder": next((p for p in relative.parts if FOCAL_PATTERN.match(p)), None),
                    },
                )
            )
    return items


def intrinsics_for(focal_folder: str | None, size: tuple[int, int]) -> np.ndarray | None:
    """fx = fy = f_mm / 23.76 * W on the square sensor, principal point at the centre (derived, not published)."""
    if focal_folder is None:
        return None
    focal_mm = float(FOCAL_PATTERN.match(focal_folder).group(1))
    height, width = size
    focal = focal_mm / SENSOR_WIDTH_MM * width
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def load_episode(
    item: Item,
    frame_stride: int,
    max_frames: int | None,
    size: tuple[int, int] | None,
    heldout_fraction: float,
) -> Episode:
    poses = load_poses(item.paths["extrinsics"], item.info["camera"])
    indices = strided_indices(len(poses), frame_stride, max_frames)
    if len(indices) < 2:
        raise SkipItem(f"{len(indices)} frames after stride/max_frames, need at least 2")
    frames, source_size = read_video(item.paths["video"], indices, size)
    fps, _ = video_info(item.paths["video"])
    return pose_episode(
        frames,
        poses[indices],
        MODALITY,
        fps=fps / frame_stride,
        intrinsics=intrinsics_for(item.info["focal_folder"], frames.shape[1:3]),
        caption=item.info["caption"],
        split=split_for(item.name, heldout_fraction),
        meta=clip_meta(
            DATASET,
            indices,
            source_size,
            "c2w, OpenCV camera axes, UE world with y mirrored (right-handed), metres",
            camera=item.info["camera"],
        ),
    )


def iter_episodes(
    source_dir: str | Path,
    frame_stride: int = 1,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    heldout_fraction: float = 0.0,
    report: ConversionReport | None = None,
    skip_bad: bool = False,
    exclude: Iterable[str] = (),
) -> Iterator[Episode]:
    """One camera7 episode per camera video of every scene under `source_dir` (train/ and val/)."""
    source_dir = require_dir(Path(source_dir), "MultiCamVideo")
    options = dict(frame_stride=frame_stride, max_frames=max_frames, size=size, heldout_fraction=heldout_fraction)
    yield from load_items(DATASET, list_items(source_dir), load_episode, report, skip_bad, exclude, **options)
