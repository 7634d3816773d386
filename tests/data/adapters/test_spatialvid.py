import numpy as np
import pytest
from adapter_fixtures import SPATIALVID_FPS, STEP, expected_camera7_row, frame_levels, levels, write_spatialvid

from astra.data.adapters.common import ConversionReport
from astra.data.adapters.spatialvid import iter_episodes
from astra.errors import DataError


def test_world_to_camera_poses_become_forward_camera7_rows(tmp_path):
    c2w = write_spatialvid(tmp_path, num_frames=9)
    episodes = list(iter_episodes(tmp_path))

    assert len(episodes) == 1
    episode = episodes[0]
    assert episode.modality == "camera7" and episode.frames.shape == (5, 32, 32, 3)
    # poses sample every int(fps / 5) = 2nd video frame; the episode keeps exactly those frames
    np.testing.assert_allclose(frame_levels(episode.frames), levels(9)[::2], atol=1.5)
    assert episode.fps == pytest.approx(SPATIALVID_FPS / 2)
    np.testing.assert_allclose(episode.poses, c2w, atol=1e-9)
    assert episode.meta["translation_scale"] == pytest.approx(STEP)
    np.testing.assert_allclose(episode.actions[:-1], np.tile(expected_camera7_row(), (4, 1)), atol=1e-6)
    np.testing.assert_allclose(episode.intrinsics, [[0.6 * 32, 0, 16], [0, 0.8 * 32, 16], [0, 0, 1]])
    assert episode.caption == "A street. Cars pass."


def test_c2w_convention_reads_the_same_file_differently(tmp_path):
    c2w = write_spatialvid(tmp_path, num_frames=9)
    episode = next(iter_episodes(tmp_path, pose_convention="c2w"))
    np.testing.assert_allclose(episode.poses, np.linalg.inv(c2w), atol=1e-9)
    assert not np.allclose(episode.actions[:-1], expected_camera7_row(), atol=1e-3)
    with pytest.raises(ValueError, match="pose_convention"):
        next(iter_episodes(tmp_path, pose_convention="opengl"))


def test_scan_without_metadata_csv_and_fps_filter(tmp_path):
    write_spatialvid(tmp_path, num_frames=9)
    (tmp_path / "SpatialVid/HQ/data/train/SpatialVID_HQ_metadata.csv").unlink()
    assert len(list(iter_episodes(tmp_path))) == 1  # fps from the video header
    report = ConversionReport("spatialvid")
    assert list(iter_episodes(tmp_path, min_fps=25, report=report)) == []
    assert "below min_fps=25" in report.skipped["spatialvid-0a1b2c"]


def test_bad_pose_rows_name_the_file(tmp_path):
    write_spatialvid(tmp_path, num_frames=9)
    poses_file = tmp_path / "SpatialVid/HQ/annotations/group_0001/0a1b2c/poses.npy"
    np.save(poses_file, np.zeros((5, 6)))
    with pytest.raises(DataError, match=r"poses\.npy.*shape \[N, 7\]"):
        list(iter_episodes(tmp_path))
    np.save(poses_file, np.zeros((5, 7)))
    with pytest.raises(DataError, match=r"poses\.npy: zero quaternion in row 0"):
        list(iter_episodes(tmp_path))
    np.save(poses_file, np.zeros((5, 7)).astype(str))
    with pytest.raises(DataError, match=r"poses\.npy: .* must hold real numbers, got dtype <U"):
        list(iter_episodes(tmp_path))


def test_empty_pose_and_intrinsics_files(tmp_path):
    write_spatialvid(tmp_path, num_frames=9)
    annotation = tmp_path / "SpatialVid/HQ/annotations/group_0001/0a1b2c"
    np.save(annotation / "intrinsics.npy", np.zeros((0, 4)))
    with pytest.raises(DataError, match=r"intrinsics\.npy: no rows"):
        list(iter_episodes(tmp_path))
    np.save(annotation / "poses.npy", np.zeros((0, 7)))
    report = ConversionReport("spatialvid")
    assert list(iter_episodes(tmp_path, report=report)) == []
    assert "0 poses, need at least 2" in report.skipped["spatialvid-0a1b2c"]
