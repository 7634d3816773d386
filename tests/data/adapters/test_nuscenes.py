import json

import numpy as np
import pytest
from adapter_fixtures import (
    CAMERA_IN_EGO,
    CAMERA_OFFSET,
    NUSCENES_DT_US,
    NUSCENES_VERSION,
    STEP,
    YAW,
    frame_levels,
    levels,
    rotation_z,
    write_nuscenes,
)

from astra.actions.geometry import make_pose
from astra.data.adapters.common import ConversionReport
from astra.data.adapters.nuscenes import iter_episodes
from astra.errors import DataError


def test_front_camera_chain_poses_and_actions(tmp_path):
    expected_poses = write_nuscenes(tmp_path, scene_lengths=(9, 3))
    report = ConversionReport("nuscenes")
    episodes = list(iter_episodes(tmp_path, min_frames=5, report=report))

    assert len(episodes) == 1 and list(report.skipped) == ["nuscenes-scene-0001"]
    assert "3 CAM_FRONT frames in the scene, fewer than min_frames=5" in report.skipped["nuscenes-scene-0001"]
    episode = episodes[0]
    assert episode.modality == "vehicle7" and episode.frames.shape == (9, 32, 32, 3)
    # keyframes and sweeps, CAM_FRONT only, in timestamp order (JPEG: levels within a few grey steps)
    np.testing.assert_allclose(frame_levels(episode.frames), levels(9), atol=3)
    assert episode.fps == pytest.approx(1e6 / NUSCENES_DT_US)
    np.testing.assert_allclose(episode.poses, expected_poses[0], atol=1e-9)
    assert episode.meta["keyframe_indices"] == [0, 4, 8]
    # the ego drives forward and turns left: the camera (1.7 m ahead of the ego origin) moves along its +z
    # (plus a little to the left, -x, from the turn) and yaws about -y
    camera = make_pose(CAMERA_IN_EGO, CAMERA_OFFSET)
    motion = np.linalg.inv(camera) @ make_pose(rotation_z(YAW), np.array([STEP, 0.0, 0.0])) @ camera
    scale = np.linalg.norm(motion[:3, 3])
    assert motion[2, 3] > 0.99 * STEP and motion[0, 3] < 0
    assert episode.meta["translation_scale"] == pytest.approx(scale)
    turn_left = [*(motion[:3, 3] / scale), 0.0, -np.sin(YAW / 2), 0.0, np.cos(YAW / 2)]
    np.testing.assert_allclose(episode.actions[:-1], np.tile(turn_left, (8, 1)), atol=1e-5)
    np.testing.assert_allclose(episode.actions[-1], [0, 0, 0, 0, 0, 0, 1], atol=1e-6)
    assert episode.caption == "drive 0, turn left"


def test_resize_scales_intrinsics(tmp_path):
    write_nuscenes(tmp_path, scene_lengths=(5,))
    episode = next(iter_episodes(tmp_path, min_frames=2, min_keyframes=2, size=(16, 24)))
    assert episode.frames.shape == (5, 16, 24, 3)
    np.testing.assert_allclose(episode.intrinsics, [[12.0, 0, 12.0], [0, 8.0, 8.0], [0, 0, 1]])


def test_missing_ego_pose_names_table_and_token(tmp_path):
    write_nuscenes(tmp_path, scene_lengths=(5,))
    table = tmp_path / NUSCENES_VERSION / "ego_pose.json"
    table.write_text(json.dumps([r for r in json.loads(table.read_text()) if r["token"] != "ego0-3"]))
    with pytest.raises(DataError, match=r"ego_pose\.json.*ego0-3"):
        list(iter_episodes(tmp_path, min_frames=2, min_keyframes=2))
    report = ConversionReport("nuscenes")
    assert list(iter_episodes(tmp_path, min_frames=2, min_keyframes=2, report=report, skip_bad=True)) == []
    assert "ego0-3" in report.skipped["nuscenes-scene-0000"]


def test_version_folder_must_exist(tmp_path):
    with pytest.raises(DataError, match="v1.0-"):
        list(iter_episodes(tmp_path))


def test_length_filter_judges_the_source_scene_before_stride_and_max_frames(tmp_path):
    write_nuscenes(tmp_path, scene_lengths=(40, 29))
    report = ConversionReport("nuscenes")
    episodes = list(iter_episodes(tmp_path, frame_stride=2, max_frames=16, report=report))  # default filters

    assert [e.num_frames for e in episodes] == [16] and report.converted == ["nuscenes-scene-0000"]
    assert report.skipped == {"nuscenes-scene-0001": "29 CAM_FRONT frames in the scene, fewer than min_frames=30"}
    np.testing.assert_allclose(frame_levels(episodes[0].frames), levels(32)[::2] % 256, atol=3)  # uint8 wraps


def test_scenes_with_fewer_than_min_keyframes_are_skipped(tmp_path):
    write_nuscenes(tmp_path, scene_lengths=(9, 8), keyframe_every=4)  # keyframes: 0, 4, 8 and 0, 4
    report = ConversionReport("nuscenes")
    assert len(list(iter_episodes(tmp_path, min_frames=5, report=report))) == 1
    assert report.skipped == {"nuscenes-scene-0001": "2 CAM_FRONT keyframes in the scene, fewer than min_keyframes=3"}
    assert len(list(iter_episodes(tmp_path, min_frames=5, min_keyframes=2))) == 2


@pytest.mark.parametrize(
    "table, token, key, value",
    [
        ("ego_pose", "ego0-2", "rotation", ["a", 0, 0, 0]),
        ("calibrated_sensor", "calib-CAM_FRONT", "translation", "1.7 0 1.5"),
        ("sample_data", "sd0-CAM_FRONT-2", "timestamp", "soon"),
        ("calibrated_sensor", "calib-CAM_FRONT", "camera_intrinsic", [[16, 0, 16], [0, "f", 16], [0, 0, 1]]),
        ("calibrated_sensor", "calib-CAM_FRONT", "camera_intrinsic", [[16, 0], [0, 16, 16], [0, 0, 1]]),
        ("sample_data", "sd0-CAM_FRONT-2", "filename", None),
        ("sample_data", "sd0-CAM_FRONT-3", "filename", 7),
        ("scene", "scene0", "first_sample_token", ["s0-0"]),
        ("sample_data", "sd0-CAM_FRONT-0", "sample_token", ["s0-0"]),
        ("sample_data", "sd0-CAM_FRONT-0", "calibrated_sensor_token", ["calib-CAM_FRONT"]),
    ],
    ids=[
        "rotation-string",
        "translation-string",
        "timestamp-string",
        "intrinsic-string",
        "intrinsic-ragged",
        "filename-null",
        "filename-number",
        "first-sample-list",
        "sample-token-list",
        "calibration-token-list",
    ],
)
def test_malformed_field_names_table_record_and_field(tmp_path, table, token, key, value):
    write_nuscenes(tmp_path, scene_lengths=(5,))
    path = tmp_path / NUSCENES_VERSION / f"{table}.json"
    records = json.loads(path.read_text())
    next(r for r in records if r["token"] == token)[key] = value
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"{table}\.json: record '{token}' '{key}'"):
        list(iter_episodes(tmp_path, min_frames=2, min_keyframes=2))
