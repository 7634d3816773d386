"""nuScenes v1.0 -> one front-camera episode per scene (modality vehicle7).

Reads the devkit's JSON tables directly (no nuscenes-devkit: it pins numpy<2). Per scene: start at the
CAM_FRONT sample_data of `scene.first_sample_token` and follow `next` (keyframes and sweeps, ~12 Hz) to the end
of the scene. Camera-to-world = T(ego_pose) @ T(calibrated_sensor); nuScenes quaternions are (w, x, y, z); the
global frame is the map frame in metres and the camera frame is OpenCV. Caption = `scene.description`.
Astra's filter: scenes whose source chain has fewer than `min_frames` (30) frames or fewer than `min_keyframes`
(3) keyframes (`is_key_frame`) are skipped and reported. It judges the source scene, as Astra did, so it runs
before `frame_stride` / `max_frames` cut the chain (a short `max_frames` must not drop every scene).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from astra.data.adapters.common import (
    ConversionReport,
    Item,
    SkipItem,
    episode_name,
    load_items,
    load_json,
    pose_episode,
    read_images,
    scale_intrinsics,
    split_for,
)
from astra.actions.geometry import make_pose, quaternion_to_matrix
from astra.data.format import Episode
from astra.errors import DataError

DATASET = "nuscenes"
MODALITY = "vehicle7"
TABLES = ("scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "sensor", "log")
MICROSECONDS = 1e6
DEFAULT_MIN_FRAMES = 30  # Astra's filter: shorter scenes are skipped (and reported)
DEFAULT_MIN_KEYFRAMES = 3  # Astra's filter: scenes with fewer keyframes are skipped (and reported)


def find_version_dir(source_dir: Path, version: str | None) -> Path:
    """`<dataroot>/<version>/`; with no version, the single `v1.0-*` folder present."""
    if version is not None:
        folder = source_dir / version
        if not folder.is_dir():
            raise DataError(f"{folder}: nuScenes table folder not found")
        return folder
    found = sorted(p for p in source_dir.glob("v1.0-*") if p.is_dir())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DataError(f"{source_dir}: expected exactly one v1.0-* table folder (found {names}); pass version=")
    return found[0]


def load_tables(version_dir: Path) -> dict[str, dict[str, dict]]:
    """The tables as {table: {token: record}}; DataError names the file and row of a record with no token."""
    tables = {}
    for table in TABLES:
        path = version_dir / f"{table}.json"
        records = load_json(path)
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of records")
        by_token = {}
        for row, record in enumerate(records):
            if not isinstance(record, dict) or "token" not in record:
                raise DataError(f"{path}: row {row} has no 'token'")
            by_token[record["token"]] = record
        tables[table] = by_token
    return tables


def _get(tables: dict, table: str, token: str, version_dir: Path) -> dict:
    try:
        return tables[table][token]
    except (KeyError, TypeError):  # TypeError: a token that is not a string (a list, ...)
        raise DataError(f"{version_dir / (table + '.json')}: no record with token {token!r}") from None


def _field(record: dict, key: str, table: str, version_dir: Path, kind: type | None = None) -> Any:
    """`record[key]`, checked to be a `kind` when given (a null filename must not reach `Path /` as a TypeError);
    DataError naming the file, record and field otherwise."""
    where = f"{version_dir / (table + '.json')}: record {record['token']!r}"
    try:
        value = record[key]
    except KeyError:
        raise DataError(f"{where} has no {key!r}") from None
    if kind is not None and not isinstance(value, kind):
        raise DataError(f"{where} {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def keyframes_by_sample(tables: dict, channel: str, version_dir: Path) -> dict[str, dict]:
    """{sample token: its `channel` sample_data record}, built once (sample_data is millions of rows)."""
    calibrations = set()
    for token, calib in tables["calibrated_sensor"].items():
        sensor = _get(tables, "sensor", _field(calib, "sensor_token", "calibrated_sensor", version_dir), version_dir)
        if sensor.get("channel") == channel:
            calibrations.add(token)
    return {
        _field(record, "sample_token", "sample_data", version_dir, str): record
        for record in tables["sample_data"].values()
        if record.get("is_key_frame")
        and _field(record, "calibrated_sensor_token", "sample_data", version_dir, str) in calibrations
    }


def camera_chain(tables: dict, scene: dict, keyframes: dict[str, dict], version_dir: Path) -> list[dict]:
    """The scene's camera sample_data records in order: the first keyframe, then `next` until ''."""
    first_sample = _field(scene, "first_sample_token", "scene", version_dir, str)
    if first_sample not in keyframes:
        raise DataError(f"{version_dir / 'sample_data.json'}: no camera keyframe for sample {first_sample!r}")
    chain = [keyframes[first_sample]]
    while chain[-1].get("next"):
        if len(chain) > len(tables["sample_data"]):
            raise DataError(f"{version_dir / 'sample_data.json'}: camera 'next' pointers form a cycle")
        chain.append(_get(tables, "sample_data", chain[-1]["next"], version_dir))
    return chain


def _numbers(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """`value` as a finite float array of `shape`; DataError naming `where` (file, record, field) otherwise."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        array = None
    if array is None or array.shape != shape or not np.isfinite(array).all():
        raise DataError(f"{where} must be {'x'.join(map(str, shape))} finite numbers, got {value!r}")
    return array


def _timestamp(record: dict, version_dir: Path) -> float:
    value = _field(record, "timestamp", "sample_data", version_dir)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        where = f"{version_dir / 'sample_data.json'}: record {record['token']!r}"
        raise DataError(f"{where} 'timestamp' must be a number (microseconds), got {value!r}")
    return value


def camera_to_world(tables: dict, record: dict, version_dir: Path) -> np.ndarray:
    """T(ego -> global) @ T(camera -> ego); both stored as translation + (w, x, y, z) quaternion."""
    transforms = []
    for table, key in (("ego_pose", "ego_pose_token"), ("calibrated_sensor", "calibrated_sensor_token")):
        pose = _get(tables, table, _field(record, key, "sample_data", version_dir), version_dir)
        where = f"{version_dir / (table + '.json')}: record {pose['token']!r}"
        quaternion_wxyz = _numbers(_field(pose, "rotation", table, version_dir), (4,), f"{where} 'rotation'")
        translation = _numbers(_field(pose, "translation", table, version_dir), (3,), f"{where} 'translation'")
        if not np.linalg.norm(quaternion_wxyz) > 0:
            raise DataError(f"{where} has a zero 'rotation' quaternion")
        transforms.append(make_pose(quaternion_to_matrix(np.roll(quaternion_wxyz, -1)), translation))
    return transforms[0] @ transforms[1]


def list_items(tables: dict) -> list[Item]:
    return [
        Item(episode_name(DATASET, scene.get("name", token)), info={"scene": token})
        for token, scene in sorted(tables["scene"].items(), key=lambda kv: kv[1].get("name", kv[0]))
    ]


def load_episode(
    item: Item,
    source_dir: Path,
    version_dir: Path,
    tables: dict,
    keyframes: dict[str, dict],
    channel: str,
    frame_stride: int,
    max_frames: int | None,
    min_frames: int,
    min_keyframes: int,
    size: tuple[int, int] | None,
    heldout_fraction: float,
) -> Episode:
    scene = tables["scene"][item.info["scene"]]
    source = camera_chain(tables, scene, keyframes, version_dir)
    if len(source) < min_frames:
        raise SkipItem(f"{len(source)} {channel} frames in the scene, fewer than min_frames={min_frames}")
    source_keyframes = sum(1 for record in source if record.get("is_key_frame"))
    if source_keyframes < min_keyframes:
        raise SkipItem(f"{source_keyframes} {channel} keyframes in the scene, fewer than min_keyframes={min_keyframes}")
    chain = source[::frame_stride][:max_frames]
    if len(chain) < 2:
        raise SkipItem(f"{len(chain)} {channel} frames after frame_stride/max_frames, need at least 2")
    poses = np.stack([camera_to_world(tables, record, version_dir) for record in chain])
    timestamps = np.array([_timestamp(r, version_dir) for r in chain], dtype=np.int64)
    steps = np.diff(timestamps)
    if (steps <= 0).any():
        row = int(np.argmax(steps <= 0)) + 1
        raise DataError(
            f"{version_dir / 'sample_data.json'}: {channel} timestamps not increasing at {chain[row]['token']!r}"
        )
    frames, source_size = read_images(
        [source_dir / _field(r, "filename", "sample_data", version_dir, str) for r in chain], size
    )
    calib = _get(tables, "calibrated_sensor", chain[0]["calibrated_sensor_token"], version_dir)
    intrinsics = calib.get("camera_intrinsic") or None  # [] for sensors that are not cameras
    if intrinsics is not None:
        where = f"{version_dir / 'calibrated_sensor.json'}: record {calib['token']!r} 'camera_intrinsic'"
        intrinsics = scale_intrinsics(_numbers(intrinsics, (3, 3), where), source_size, frames.shape[1:3])
    log = tables["log"].get(scene.get("log_token"), {})
    return pose_episode(
        frames,
        poses,
        MODALITY,
        fps=MICROSECONDS / float(np.median(steps)),
        intrinsics=intrinsics,
        caption=scene.get("description", ""),
        split=split_for(item.name, heldout_fraction),
        meta={
            "dataset": DATASET,
            "scene": scene.get("name"),
            "scene_token": scene["token"],
            "location": log.get("location"),
            "vehicle": log.get("vehicle"),
            "channel": channel,
            "timestamps_us": timestamps.tolist(),
            "keyframe_indices": [i for i, r in enumerate(chain) if r.get("is_key_frame")],
            "pose_convention": "c2w, OpenCV camera axes, nuScenes global frame (metres)",
        },
    )


def iter_episodes(
    source_dir: str | Path,
    version: str | None = None,
    channel: str = "CAM_FRONT",
    frame_stride: int = 1,
    max_frames: int | None = None,
    min_frames: int = DEFAULT_MIN_FRAMES,
    min_keyframes: int = DEFAULT_MIN_KEYFRAMES,
    size: tuple[int, int] | None = None,
    heldout_fraction: float = 0.0,
    report: ConversionReport | None = None,
    skip_bad: bool = False,
    exclude: Iterable[str] = (),
) -> Iterator[Episode]:
    """One vehicle7 episode per scene of `<source_dir>/<version>/` (images read from `source_dir`).

    `min_frames` / `min_keyframes` filter on the whole source scene (see the module docstring), before
    `frame_stride` and `max_frames` cut it; 0 turns a filter off.
    """
    source_dir = Path(source_dir)
    version_dir = find_version_dir(source_dir, version)
    tables = load_tables(version_dir)
    keyframes = keyframes_by_sample(tables, channel, version_dir)
    options = dict(source_dir=source_dir, version_dir=version_dir, tables=tables, keyframes=keyframes, channel=channel)
    options.update(frame_stride=frame_stride, max_frames=max_frames, min_frames=min_frames, size=size)
    options.update(min_keyframes=min_keyframes, heldout_fraction=heldout_fraction)
    yield from load_items(DATASET, list_items(tables), load_episode, report, skip_bad, exclude, **options)
