import numpy as np
import pytest
from adapter_fixtures import SEKAI_FPS, STEP, YAW, frame_levels, levels, rotation_y, write_sekai

from astra.data.adapters.common import ConversionReport
from astra.data.adapters.sekai import iter_episodes
from astra.errors import DataError


def test_clip_poses_give_forward_camera12_rows(tmp_path):
    poses = write_sekai(tmp_path, num_frames=9)
    report = ConversionReport("sekai")
    episodes = list(iter_episodes(tmp_path, report=report))

    assert len(episodes) == 1
    assert list(report.skipped) == ["sekai-game-drone-missing_0000000_0000300"]
    assert "not present" in report.skipped["sekai-game-drone-missing_0000000_0000300"]
    episode = episodes[0]
    assert episode.modality == "camera12" and episode.caption == "a drone flies forward"
    np.testing.assert_allclose(episode.poses, poses, atol=1e-6)
    np.testing.assert_allclose(frame_levels(episode.frames), levels(9), atol=1.5)
    assert episode.fps == pytest.approx(SEKAI_FPS)
    assert episode.meta["translation_scale"] == pytest.approx(STEP, rel=1e-5)
    # row-major [R | t / scale]: rotation of YAW to the right, one unit forward along +z
    expected = np.concatenate([rotation_y(YAW), [[0.0], [0.0], [1.0]]], axis=1).reshape(12)
    np.testing.assert_allclose(episode.actions[:-1], np.tile(expected, (8, 1)), atol=1e-5)
    np.testing.assert_allclose(episode.intrinsics, [[16, 0, 16], [0, 16, 16], [0, 0, 1]])


def test_frame_stride_and_max_frames(tmp_path):
    write_sekai(tmp_path, num_frames=9)
    episode = next(iter_episodes(tmp_path, frame_stride=2, max_frames=4, size=(16, 16)))
    assert episode.frames.shape == (4, 16, 16, 3) and episode.fps == pytest.approx(SEKAI_FPS / 2)
    np.testing.assert_allclose(frame_levels(episode.frames), levels(7)[::2], atol=1.5)
    assert episode.meta["source_frame_indices"] == [0, 2, 4, 6]
    assert episode.meta["translation_scale"] == pytest.approx(2 * STEP * np.cos(YAW / 2), rel=1e-3)
    np.testing.assert_allclose(episode.intrinsics, [[8, 0, 8], [0, 8, 8], [0, 0, 1]])


def test_nan_extrinsic_names_file_and_row(tmp_path):
    poses = write_sekai(tmp_path, num_frames=9)
    camera = tmp_path / "sekai-game-drone" / "abc_0000000_0000009.npz"
    poses[5, 0, 3] = np.nan
    np.savez(camera, extrinsic=poses)
    with pytest.raises(DataError, match=r"abc_0000000_0000009\.npz.*row 5"):
        list(iter_episodes(tmp_path))


def test_video_shorter_than_poses_is_an_error(tmp_path):
    poses = write_sekai(tmp_path, num_frames=5)
    camera = tmp_path / "sekai-game-drone" / "abc_0000000_0000005.npz"
    np.savez(camera, extrinsic=np.concatenate([poses, poses]))
    with pytest.raises(DataError, match=r"abc_0000000_0000005\.mp4.*too short"):
        list(iter_episodes(tmp_path))


def test_corrupt_npz_is_reported_when_skipping(tmp_path):
    write_sekai(tmp_path, num_frames=5)
    (tmp_path / "sekai-game-drone" / "abc_0000000_0000005.npz").write_bytes(b"PK\x03\x04 truncated")
    report = ConversionReport("sekai")
    assert list(iter_episodes(tmp_path, report=report, skip_bad=True)) == []
    assert "abc_0000000_0000005.npz: cannot read" in report.skipped["sekai-game-drone-abc_0000000_0000005"]
