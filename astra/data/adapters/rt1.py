"""RT-1 (`fractal20220817_data` of Open X-Embodiment) in the LeRobot layout -> one episode per episode (robot7).

LeRobot v2.0/v2.1: `meta/info.json`, `meta/episodes.jsonl`, `meta/tasks.jsonl`,
`data/chunk-XXX/episode_XXXXXX.parquet` (one episode per file), `videos/chunk-XXX/<camera key>/episode_XXXXXX.mp4`;
paths come from info.json's `data_path` / `video_path` templates. LeRobot v3.0: many episodes per
`data/chunk-XXX/file-XXX.parquet` and per concatenated video, located through `meta/episodes/**/*.parquet`
(`data/chunk_index`, `data/file_index`, `videos/<key>/{chunk_index, file_index, from_timestamp}`).
The `action` column is [7] = world_vector (3, base frame) ++ rotation_delta (3, roll/pitch/yaw) ++ gripper.
Rows keep metres and radians (astra.actions.align divides by the episode's `translation_scale` and
`rotation_scale`, estimated here as median per-frame step lengths); the gripper is mapped linearly from the
dataset's (open, closed) values to the registry's 0 open .. 1 closed. The RLDS/TFRecord release is not read
(it needs TensorFlow); convert it with LeRobot's port first. The camera is fixed and its pose unknown: no poses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from astra.data.adapters.common import (
    ConversionReport,
    Item,
    check_rows,
    episode_name,
    load_items,
    load_json,
    median_step,
    read_video,
    require_file,
    skip_if_missing,
    split_for,
)
from astra.data.format import Episode
from astra.errors import DataError

DATASET = "rt1"
MODALITY = "robot7"
ACTION_KEY = "action"
ACTION_WIDTH = 7
V2_VERSIONS = ("v2.0", "v2.1")
V3_VERSIONS = ("v3.0",)
# LeRobot's fractal port stores the gripper as +1 open, 0 closed; IPEC-COMMUNITY's may differ: check and override.
DEFAULT_GRIPPER_OPEN = 1.0
DEFAULT_GRIPPER_CLOSED = 0.0
INDEX_COLUMNS = ("episode_index", "frame_index")  # of a data parquet: which rows are the episode's, in what order


def load_info(source_dir: Path) -> dict:
    info = load_json(source_dir / "meta" / "info.json")
    if not isinstance(info, dict):
        raise DataError(f"{source_dir / 'meta/info.json'}: expected a JSON object, got {type(info).__name__}")
    version = info.get("codebase_version")
    supported = V2_VERSIONS + V3_VERSIONS
    if version not in supported:
        raise DataError(f"{source_dir / 'meta/info.json'}: codebase_version {version!r} not in {', '.join(supported)}")
    features = info.get("features", {})
    shape = features.get(ACTION_KEY, {}).get("shape")
    if shape != [ACTION_WIDTH]:
        raise DataError(
            f"{source_dir / 'meta/info.json'}: feature {ACTION_KEY!r} must have shape [{ACTION_WIDTH}], got {shape}"
        )
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise DataError(f"{source_dir / 'meta/info.json'}: 'fps' must be a positive number, got {fps!r}")
    for key in ("data_path", "video_path"):
        if not isinstance(info.get(key), str):
            raise DataError(f"{source_dir / 'meta/info.json'}: {key!r} must be a path template string")
    chunks = info.get("chunks_size")
    if version in V2_VERSIONS and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1):
        raise DataError(f"{source_dir / 'meta/info.json'}: 'chunks_size' must be a positive integer, got {chunks!r}")
    return info


def choose_camera(info: dict, camera_key: str | None, where: Path) -> str:
    videos = [name for name, feature in info.get("features", {}).items() if feature.get("dtype") == "video"]
    if camera_key is None and videos:
        return videos[0]
    if camera_key not in videos:
        raise DataError(
            f"{where}: camera {camera_key!r} is not a video feature (video features: {', '.join(videos) or 'none'})"
        )
    return camera_key


def load_tasks(source_dir: Path) -> dict[int, str]:
    jsonl, table = source_dir / "meta" / "tasks.jsonl", source_dir / "meta" / "tasks.parquet"
    if jsonl.is_file():
        tasks = {}
        for row, record in read_jsonl(jsonl):
            if not isinstance(record.get("task_index"), int) or not isinstance(record.get("task"), str):
                raise DataError(f"{jsonl}: line {row} needs an integer 'task_index' and a string 'task'")
            tasks[record["task_index"]] = record["task"]
        return tasks
    if table.is_file():
        frame = read_parquet(table).to_pydict()
        names = frame.get("task") or frame.get("__index_level_0__") or []
        return dict(zip(frame.get("task_index", []), names))
    return {}


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) of each non-blank line; DataError names the file and line of one that is not an object."""
    records = []
    try:
        with open(require_file(path, "metadata file")) as handle:
            for row, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DataError(f"{path}: line {row} is not valid JSON ({error})") from None
                    if not isinstance(record, dict):
                        raise DataError(f"{path}: line {row} is not a JSON object (got {type(record).__name__})")
                    records.append((row, record))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None
    return records


def read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: cannot read parquet ({error})") from None


def _value(record: dict, key: str, where: str, time: bool = False) -> Any:
    """An episode/chunk/file index (an integer >= 0) or, with `time`, a start time in seconds (a finite number >= 0)
    from one metadata record, where a null parquet cell arrives as None; DataError naming `where` and the column."""
    value = record[key]  # KeyError: list_items names the missing column
    kinds = (int, float) if time else int
    if isinstance(value, bool) or not isinstance(value, kinds) or not (math.isfinite(value) and value >= 0):
        what = "a finite number of seconds >= 0" if time else "an integer >= 0"
        raise DataError(f"{where} has {key!r} {value!r}, not {what}")
    return value


def _episode_item(source_dir: Path, record: dict, info: dict, camera: str, where: str) -> Item:
    """Paths of one episode from its metadata record (v2: episodes.jsonl line, v3: episodes parquet row `where`)."""
    index = _value(record, "episode_index", where)
    where = f"{where} (episode {index})"
    if info["codebase_version"] in V2_VERSIONS:
        chunk = index // info["chunks_size"]
        data = info["data_path"].format(episode_chunk=chunk, episode_index=index)
        video = info["video_path"].format(episode_chunk=chunk, video_key=camera, episode_index=index)
        start_time = 0.0
    else:
        data = info["data_path"].format(
            chunk_index=_value(record, "data/chunk_index", where), file_index=_value(record, "data/file_index", where)
        )
        video = info["video_path"].format(
            video_key=camera,
            chunk_index=_value(record, f"videos/{camera}/chunk_index", where),
            file_index=_value(record, f"videos/{camera}/file_index", where),
        )
        start_time = _value(record, f"videos/{camera}/from_timestamp", where, time=True)
    details = {"episode_index": index, "start_time": start_time, "tasks": record.get("tasks") or []}
    paths = {"data": source_dir / data, "video": source_dir / video}
    return Item(episode_name(DATASET, f"{index:06d}"), paths, details)


def list_items(source_dir: Path, info: dict, camera: str) -> list[Item]:
    """One item per episode with its data file, video file and start time in that video (v3 concatenates)."""
    if info["codebase_version"] in V2_VERSIONS:
        table = source_dir / "meta" / "episodes.jsonl"
        records = [(table, row, record) for row, record in read_jsonl(table)]
    else:
        tables = sorted((source_dir / "meta" / "episodes").rglob("*.parquet"))
        if not tables:
            raise DataError(f"{source_dir / 'meta/episodes'}: no episode metadata parquet files")
        records = [
            (table, row, record) for table in tables for row, record in enumerate(read_parquet(table).to_pylist())
        ]
    items = []
    for table, row, record in records:
        try:
            items.append(_episode_item(source_dir, record, info, camera, f"{table}: row {row}"))
        except KeyError as error:
            raise DataError(f"{table}: row {row} (or meta/info.json) lacks {error}") from None
    return items


def read_episode_table(path: Path, episode_index: int) -> dict[str, list]:
    """The episode's rows of a data parquet, ordered by frame_index."""
    if not path.is_file():
        raise DataError(f"{path}: missing data file of episode {episode_index}")
    table = read_parquet(path)
    for column in (ACTION_KEY, *INDEX_COLUMNS):
        if column not in table.column_names:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names)})")
    for column in INDEX_COLUMNS:  # a null one would drop its row, or sort it last, without a word
        values = table[column]
        if not pa.types.is_integer(values.type):
            raise DataError(f"{path}: column {column!r} must hold integers, got {values.type}")
        if values.null_count:
            row = pc.index(pc.is_null(values), True).as_py()
            raise DataError(f"{path}: row {row} has a null {column!r} (reading episode {episode_index})")
    rows = table.filter(pc.equal(table["episode_index"], episode_index)).sort_by("frame_index").to_pydict()
    if not rows["frame_index"]:
        raise DataError(f"{path}: no rows of episode {episode_index}")
    return rows


def load_episode(
    item: Item,
    fps: float,
    tasks: dict[int, str],
    gripper_open: float,
    gripper_closed: float,
    max_frames: int | None,
    size: tuple[int, int] | None,
    heldout_fraction: float,
) -> Episode:
    data, video = item.paths["data"], item.paths["video"]
    skip_if_missing(video, "video")
    rows = read_episode_table(data, item.info["episode_index"])
    try:
        actions = np.asarray(rows[ACTION_KEY], dtype=np.float64)[:max_frames]
    except (ValueError, TypeError):
        raise DataError(f"{data}: column {ACTION_KEY!r} has rows of different lengths or nulls") from None
    check_rows(actions, (ACTION_WIDTH,), str(data), f"column {ACTION_KEY!r}")
    first_frame = round(item.info["start_time"] * fps)
    frames, source_size = read_video(video, list(range(first_frame, first_frame + len(actions))), size)
    actions[:, 6] = np.clip((actions[:, 6] - gripper_open) / (gripper_closed - gripper_open), 0.0, 1.0)
    task_index = rows.get("task_index", [None])[0]
    caption = tasks.get(task_index) or next(iter(item.info["tasks"]), "")
    return Episode(
        frames=frames,
        actions=actions.astype(np.float32),
        modality=MODALITY,
        fps=float(fps),
        caption=caption,
        split=split_for(item.name, heldout_fraction),
        meta={
            "dataset": DATASET,
            "episode_index": item.info["episode_index"],
            "translation_scale": median_step(actions[:, :3]),
            "rotation_scale": median_step(actions[:, 3:6]),
            "gripper_source_values": {"open": gripper_open, "closed": gripper_closed},
            "source_size": list(source_size),
        },
    )


def iter_episodes(
    source_dir: str | Path,
    camera_key: str | None = None,
    gripper_open: float = DEFAULT_GRIPPER_OPEN,
    gripper_closed: float = DEFAULT_GRIPPER_CLOSED,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    heldout_fraction: float = 0.0,
    report: ConversionReport | None = None,
    skip_bad: bool = False,
    exclude: Iterable[str] = (),
) -> Iterator[Episode]:
    """One robot7 episode per LeRobot episode; `camera_key` defaults to the first video feature."""
    source_dir = Path(source_dir)
    if gripper_open == gripper_closed:
        raise ValueError("gripper_open and gripper_closed must differ")
    info = load_info(source_dir)
    camera = choose_camera(info, camera_key, source_dir / "meta" / "info.json")
    options = dict(fps=float(info["fps"]), tasks=load_tasks(source_dir), gripper_open=gripper_open)
    options.update(gripper_closed=gripper_closed, max_frames=max_frames, size=size, heldout_fraction=heldout_fraction)
    items = list_items(source_dir, info, camera)
    yield from load_items(DATASET, items, load_episode, report, skip_bad, exclude, **options)
