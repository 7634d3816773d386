import json

import numpy as np
import pytest
from adapter_fixtures import MULTICAM_FPS, STEP, expected_camera7_row, frame_levels, levels, write_multicam

from astra.data.adapters.multicam import iter_episodes, parse_matrix
from astra.errors import DataError


def test_unreal_extrinsics_become_opencv_camera7_rows(tmp_path):
    write_multicam(tmp_path, num_frames=5)
    episodes = {e.meta["camera"]: e for e in iter_episodes(tmp_path)}

    assert sorted(episodes) == ["cam01", "cam02"]
    straight, turning = episodes["cam01"], episodes["cam02"]
    assert straight.meta["name"] == "multicam-train-f24_aperture5-scene1-cam01"
    assert straight.modality == "camera7" and straight.fps == pytest.approx(MULTICAM_FPS)
    np.testing.assert_allclose(frame_levels(straight.frames), levels(5), atol=1.5)
    # every pose is a proper rotation (the left-handed UE world is mirrored) in metres
    np.testing.assert_allclose(np.linalg.det(turning.poses[:, :3, :3]), 1.0, atol=1e-6)
    assert straight.meta["translation_scale"] == pytest.approx(STEP)
    # driving along the UE forward axis = moving along the OpenCV camera's +z
    np.testing.assert_allclose(straight.actions[:-1], np.tile([0, 0, 1, 0, 0, 0, 1], (4, 1)), atol=1e-6)
    # a positive UE yaw turns towards UE +Y (right): the OpenCV camera rotates +z towards +x, about +y
    np.testing.assert_allclose(turning.actions[:-1, 3:], np.tile(expected_camera7_row()[3:], (4, 1)), atol=1e-6)
    focal = 24 / 23.76 * 32
    np.testing.assert_allclose(straight.intrinsics, [[focal, 0, 16], [0, focal, 16], [0, 0, 1]])


def test_matrix_strings_as_shipped():
    parsed = parse_matrix("[1 -0 0 0] [0 1 0 0] [-0 0 1 0] [10 -20 30 1] ", "x")
    np.testing.assert_array_equal(parsed[3], [10, -20, 30, 1])
    padded = parse_matrix("[1 0 0] [0 1 0] [0 0 1] [1 2 3]", "x")
    np.testing.assert_array_equal(padded[:, 3], [0, 0, 0, 1])
    with pytest.raises(DataError, match="where: not a matrix string"):
        parse_matrix("[1 0 0 0] [a b c 0]", "where")
    with pytest.raises(DataError, match="4 bracketed rows"):
        parse_matrix("[1 0 0 0] [0 1 0 0]", "where")


def test_missing_camera_entry_names_file_and_frame(tmp_path):
    write_multicam(tmp_path, num_frames=3)
    extrinsics = tmp_path / "train/f24_aperture5/scene1/cameras/camera_extrinsics.json"
    extrinsics.write_text(extrinsics.read_text().replace('"cam02"', '"cam09"', 1))
    with pytest.raises(DataError, match=r"camera_extrinsics\.json: frame0 has no entry for cam02"):
        list(iter_episodes(tmp_path))


@pytest.mark.parametrize(
    "frame, value, message",
    [
        ("frame1", {"cam01": 5, "cam02": 5}, r"extrinsics\.json frame1/cam01: expected a matrix string, got int"),
        ("frame1", {"cam01": None, "cam02": None}, r"camera_extrinsics\.json frame1/cam01: expected a matrix string"),
        ("frame1", ["[1 0 0 0] [0 1 0 0] [0 0 1 0] [0 0 0 1]"], r"camera_extrinsics\.json: frame1 must map camera"),
    ],
    ids=["matrix-number", "matrix-null", "frame-list"],
)
def test_malformed_extrinsics_name_file_and_entry(tmp_path, frame, value, message):
    write_multicam(tmp_path, num_frames=3)
    extrinsics = tmp_path / "train/f24_aperture5/scene1/cameras/camera_extrinsics.json"
    table = json.loads(extrinsics.read_text())
    table[frame] = value
    extrinsics.write_text(json.dumps(table))
    with pytest.raises(DataError, match=message):
        list(iter_episodes(tmp_path))
