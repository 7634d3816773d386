import json

import numpy as np
import pytest
from adapter_fixtures import STEP, camera_trajectory, expected_camera7_row, write_multicam

from astra.actions.align import latent_actions
from astra.data.adapters import ADAPTERS, REPORT_FILE, convert_dataset, get_adapter
from astra.data.adapters.common import pose_action_rows, split_for, translation_scale
from astra.data.format import list_episodes, read_episode
from astra.errors import DataError


def test_pose_rows_agree_with_latent_alignment():
    poses = camera_trajectory(9)
    rows = pose_action_rows(poses, "camera7", translation_scale(poses))
    np.testing.assert_allclose(rows[:-1], np.tile(expected_camera7_row(), (8, 1)), atol=1e-6)
    np.testing.assert_allclose(rows[-1], [0, 0, 0, 0, 0, 0, 1])
    # composing the scaled per-frame rows gives the same latent actions as the poses themselves
    meta = {"translation_scale": STEP}
    np.testing.assert_allclose(latent_actions("camera7", rows), latent_actions("camera7", rows, poses, meta), atol=1e-5)
    with pytest.raises(ValueError, match="not pose-derived"):
        pose_action_rows(poses, "robot7", 1.0)


def test_static_trajectory_has_unit_scale():
    assert translation_scale(np.tile(np.eye(4), (5, 1, 1))) == 1.0
    assert translation_scale(np.eye(4)[None]) == 1.0


def test_split_is_deterministic_and_respects_fraction():
    names = [f"clip-{i}" for i in range(2000)]
    splits = [split_for(name, 0.1) for name in names]
    assert splits == [split_for(name, 0.1) for name in names]
    assert 0.07 < splits.count("heldout") / len(names) < 0.13
    assert {split_for(name, 0.0) for name in names} == {"train"}
    with pytest.raises(ValueError, match="heldout_fraction"):
        split_for("x", 1.5)


def test_registry_lists_the_five_datasets():
    assert sorted(ADAPTERS) == ["multicam", "nuscenes", "rt1", "sekai", "spatialvid"]
    with pytest.raises(ValueError, match="unknown dataset 'kitti'"):
        get_adapter("kitti")


def test_convert_writes_episodes_resumes_and_reports(tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    write_multicam(source, num_frames=5)
    report = convert_dataset("multicam", source, out, progress=False, heldout_fraction=0.0)
    assert len(report.converted) == 2 and not report.skipped
    paths = list_episodes(out)
    assert [p.name for p in paths] == [
        "multicam-train-f24_aperture5-scene1-cam01",
        "multicam-train-f24_aperture5-scene1-cam02",
    ]
    episode = read_episode(paths[0])
    np.testing.assert_allclose(episode.actions[:-1], np.tile([0, 0, 1, 0, 0, 0, 1], (4, 1)), atol=1e-6)
    assert episode.meta["translation_scale"] == pytest.approx(STEP)
    assert json.loads((out / REPORT_FILE).read_text())["converted"] == report.converted

    (out / paths[1].name / "meta.json").unlink()  # an incomplete episode is redone, complete ones are kept
    assert convert_dataset("multicam", source, out, progress=False).converted == [paths[1].name]

    (source / "train/f24_aperture5/scene1/videos/cam02.mp4").write_bytes(b"not a video")
    again = convert_dataset("multicam", source, out, overwrite=True, progress=False)
    assert again.converted == [paths[0].name] and "cam02.mp4: cannot" in again.skipped[paths[1].name]


@pytest.mark.parametrize("name", ["sekai", "spatialvid", "multicam"])
def test_a_missing_or_empty_source_is_an_error_not_zero_episodes(tmp_path, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"no {name} items found"):
        convert_dataset(name, empty, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # no empty output folder left behind
    with pytest.raises(DataError, match="no such folder"):
        convert_dataset(name, tmp_path / "nowhere", tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    "options",
    [{"max_frames": -3}, {"max_frames": 0}, {"size": (0, 0)}, {"size": (-4, 8)}, {"heldout_fraction": 2.0}],
)
def test_convert_refuses_bad_size_and_max_frames_before_writing(tmp_path, options):
    write_multicam(tmp_path / "source", num_frames=5)
    with pytest.raises(ValueError, match="must be"):
        convert_dataset("multicam", tmp_path / "source", tmp_path / "out", progress=False, **options)
    assert not (tmp_path / "out").exists()
