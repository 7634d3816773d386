import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from adapter_fixtures import RT1_CAMERA, RT1_FPS, frame_levels, levels, rt1_actions, write_rt1_v2, write_rt1_v3

from astra.data.adapters.common import ConversionReport
from astra.data.adapters.rt1 import iter_episodes
from astra.errors import DataError


@pytest.mark.parametrize("writer", [write_rt1_v2, write_rt1_v3], ids=["lerobot-v2", "lerobot-v3"])
def test_lerobot_episodes_give_robot7_rows(tmp_path, writer):
    writer(tmp_path, lengths=(6, 5))
    episodes = list(iter_episodes(tmp_path))

    assert [e.num_frames for e in episodes] == [6, 5]
    first_levels = [0, 5] if writer is write_rt1_v2 else [0, 6]  # v3: one concatenated video
    for index, episode in enumerate(episodes):
        source = rt1_actions(index, episode.num_frames)
        assert episode.modality == "robot7" and episode.poses is None and episode.fps == RT1_FPS
        assert episode.caption == f"pick object {index}"
        np.testing.assert_allclose(episode.actions[:, :6], source[:, :6], atol=1e-7)  # metres and radians kept
        # source gripper +1 open / 0 closed -> registry 0 open / 1 closed
        np.testing.assert_array_equal(episode.actions[:, 6], 1.0 - source[:, 6])
        np.testing.assert_allclose(
            frame_levels(episode.frames), levels(episode.num_frames, first_levels[index]), atol=1.5
        )
        steps = np.linalg.norm(source[:, :3], axis=1)
        assert episode.meta["translation_scale"] == pytest.approx(np.median(steps))
        assert episode.meta["rotation_scale"] == pytest.approx(0.02)


def test_gripper_convention_is_configurable(tmp_path):
    write_rt1_v2(tmp_path, lengths=(4,))
    episode = next(iter_episodes(tmp_path, gripper_open=0.0, gripper_closed=1.0))
    np.testing.assert_array_equal(episode.actions[:, 6], rt1_actions(0, 4)[:, 6])


def test_missing_video_is_skipped_and_reported(tmp_path):
    write_rt1_v2(tmp_path, lengths=(4, 4))
    (tmp_path / "videos/chunk-000/observation.images.image/episode_000001.mp4").unlink()
    report = ConversionReport("rt1")
    assert len(list(iter_episodes(tmp_path, report=report))) == 1
    assert report.converted == ["rt1-000000"] and "not present" in report.skipped["rt1-000001"]


def test_episode_record_without_index_names_file_and_row(tmp_path):
    write_rt1_v2(tmp_path, lengths=(4, 4))
    (tmp_path / "meta/episodes.jsonl").write_text('{"episode_index": 0}\n{"length": 4}\n')
    with pytest.raises(DataError, match=r"episodes\.jsonl: row 2 .*lacks 'episode_index'"):
        list(iter_episodes(tmp_path))


def test_info_json_is_validated(tmp_path):
    write_rt1_v2(tmp_path, lengths=(4,))
    info_file = tmp_path / "meta/info.json"
    info = json.loads(info_file.read_text())
    with pytest.raises(DataError, match="camera 'observation.images.wrist'"):
        list(iter_episodes(tmp_path, camera_key="observation.images.wrist"))
    for fps in (None, 0, "3"):
        info_file.write_text(json.dumps({**info, "fps": fps}))
        with pytest.raises(DataError, match=r"info\.json: 'fps' must be a positive number"):
            list(iter_episodes(tmp_path))
    info_file.write_text(json.dumps([info]))
    with pytest.raises(DataError, match=r"info\.json: expected a JSON object, got list"):
        list(iter_episodes(tmp_path))
    info_file.write_text(json.dumps({**info, "data_path": None}))
    with pytest.raises(DataError, match=r"info\.json: 'data_path' must be a path template string"):
        list(iter_episodes(tmp_path))
    info["features"]["action"]["shape"] = [8]
    info_file.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"info\.json.*'action' must have shape \[7\]"):
        list(iter_episodes(tmp_path))
    info["codebase_version"] = "v1.6"
    info_file.write_text(json.dumps(info))
    with pytest.raises(DataError, match="codebase_version 'v1.6' not in"):
        list(iter_episodes(tmp_path))


@pytest.mark.parametrize(
    "writer, relative, content, message",
    [
        (write_rt1_v2, "meta/tasks.jsonl", '{"task_index": 0}\n', r"tasks\.jsonl: line 1 needs .* a string 'task'"),
        (write_rt1_v2, "meta/episodes.jsonl", "[0]\n", r"episodes\.jsonl: line 1 is not a JSON object"),
        (write_rt1_v2, "meta/episodes.jsonl", None, r"episodes\.jsonl: missing"),
        (write_rt1_v2, "meta/episodes.jsonl", '{"episode_index": "0"}\n', r"episodes\.jsonl: row 1 has 'episode_"),
        (write_rt1_v3, "meta/tasks.parquet", "not parquet", r"tasks\.parquet: cannot read parquet"),
        (write_rt1_v3, "meta/episodes/chunk-000/file-000.parquet", "not parquet", r"file-000\.parquet: cannot read"),
    ],
    ids=["task-missing", "episode-not-object", "episodes-missing", "index-string", "tasks-garbage", "episodes-garbage"],
)
def test_malformed_metadata_names_file_and_line(tmp_path, writer, relative, content, message):
    writer(tmp_path, lengths=(4,))
    path = tmp_path / relative
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        list(iter_episodes(tmp_path))


def set_cell(path, column, row, value):
    """Rewrite one cell of a parquet file keeping its schema: None becomes a null of the column's own type."""
    table = pq.read_table(path)
    columns = table.to_pydict()
    columns[column][row] = value
    pq.write_table(pa.Table.from_pydict(columns, schema=table.schema), path)


V3_EPISODES = "meta/episodes/chunk-000/file-000.parquet"
V3_DATA = "data/chunk-000/file-000.parquet"


@pytest.mark.parametrize(
    "relative, column, value, message",
    [
        (V3_EPISODES, "episode_index", None, r"row 1 has 'episode_index' None, not an integer"),
        (V3_EPISODES, "data/chunk_index", None, r"row 1 \(episode 1\) has 'data/chunk_index' None, not an integer"),
        (V3_EPISODES, "data/file_index", None, r"row 1 \(episode 1\) has 'data/file_index' None"),
        (V3_EPISODES, f"videos/{RT1_CAMERA}/chunk_index", None, rf"row 1 \(episode 1\) has 'videos/{RT1_CAMERA}/chunk"),
        (V3_EPISODES, f"videos/{RT1_CAMERA}/file_index", None, rf"row 1 \(episode 1\) has 'videos/{RT1_CAMERA}/file_"),
        (V3_EPISODES, f"videos/{RT1_CAMERA}/from_timestamp", None, r"row 1 \(episode 1\) has '.*/from_timestamp' None"),
        (V3_EPISODES, f"videos/{RT1_CAMERA}/from_timestamp", float("nan"), r"row 1 .* nan, not a finite number"),
        (V3_DATA, "episode_index", None, "row 2 has a null 'episode_index'"),
        (V3_DATA, "frame_index", None, r"row 2 has a null 'frame_index' \(reading episode 0\)"),
    ],
    ids=[
        "episode-index",
        "data-chunk",
        "data-file",
        "video-chunk",
        "video-file",
        "from-timestamp",
        "from-timestamp-nan",
        "data-episode-index",
        "data-frame-index",
    ],
)
def test_v3_null_index_cells_name_file_row_and_column(tmp_path, relative, column, value, message):
    write_rt1_v3(tmp_path, lengths=(4, 4))
    set_cell(tmp_path / relative, column, 1 if relative == V3_EPISODES else 2, value)
    with pytest.raises(DataError, match=rf"{re.escape(relative)}: {message}"):
        list(iter_episodes(tmp_path))
