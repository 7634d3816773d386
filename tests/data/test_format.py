import json

import numpy as np
import pytest

from astra.data.format import (
    FORMAT_VERSION,
    Episode,
    list_episodes,
    read_episode,
    read_frames,
    read_meta,
    write_episode,
)
from astra.errors import DataError


def make_episode(num_frames=9, height=32, width=48, modality="camera7", seed=0, split="train") -> Episode:
    """Frames with smooth gradients plus texture, like a rendered scene."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = np.stack(
        [np.stack([(4 * x + 9 * t) % 256, (5 * y + 3 * t) % 256, (2 * (x + y) + t) % 256], -1) for t in range(num_frames)]
    ).astype(np.uint8)
    frames = np.clip(frames.astype(int) + rng.integers(-8, 8, frames.shape), 0, 255).astype(np.uint8)
    width_a = {"camera7": 7, "keyboard_mouse": 8}[modality]
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    poses[:, 2, 3] = np.arange(num_frames) * 0.1
    return Episode(
        frames=frames,
        actions=rng.standard_normal((num_frames, width_a)).astype(np.float32),
        modality=modality,
        fps=12.5,
        poses=poses,
        intrinsics=np.array([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]]),
        caption="a corridor",
        split=split,
        controls=rng.standard_normal((num_frames, 2)).astype(np.float32),
        meta={"world": "test", "seed": np.int64(3), "translation_scale": 0.1},
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_round_trip_keeps_everything_and_video_fidelity(tmp_path):
    episode = make_episode()
    path = write_episode(tmp_path, "ep0", episode)
    assert path == tmp_path / "ep0"
    loaded = read_episode(path)
    assert loaded.frames.shape == episode.frames.shape
    assert psnr(loaded.frames, episode.frames) > 40.0
    np.testing.assert_array_equal(loaded.actions, episode.actions)
    np.testing.assert_array_equal(loaded.poses, episode.poses)
    np.testing.assert_array_equal(loaded.controls, episode.controls)
    np.testing.assert_array_equal(loaded.intrinsics, episode.intrinsics)
    assert (loaded.modality, loaded.fps, loaded.caption, loaded.split) == ("camera7", 12.5, "a corridor", "train")
    assert loaded.meta == {"world": "test", "seed": 3, "translation_scale": 0.1}
    meta = read_meta(path)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["action_columns"] == ["tx", "ty", "tz", "qx", "qy", "qz", "qw"]
    assert (meta["num_frames"], meta["height"], meta["width"]) == (9, 32, 48)


def test_read_frames_range_matches_full_decode(tmp_path):
    path = write_episode(tmp_path, "ep0", make_episode(num_frames=41))  # > one keyframe interval (32), so it seeks
    full = read_frames(path)
    for start, stop in [(0, 3), (33, 37), (40, 41), (5, 5)]:
        np.testing.assert_array_equal(read_frames(path, start, stop), full[start:stop])
    with pytest.raises(DataError, match="outside"):
        read_frames(path, 10, 42)


def test_optional_fields_absent(tmp_path):
    episode = make_episode(modality="keyboard_mouse")
    episode.poses = episode.controls = episode.intrinsics = None
    loaded = read_episode(write_episode(tmp_path, "ep", episode))
    assert loaded.poses is None and loaded.controls is None and loaded.intrinsics is None


def test_list_episodes_skips_temp_and_incomplete_and_filters_split(tmp_path):
    write_episode(tmp_path, "b", make_episode(num_frames=2, split="heldout"))
    write_episode(tmp_path / "doom", "a", make_episode(num_frames=2))
    (tmp_path / ".c.tmp-123").mkdir()
    (tmp_path / ".c.tmp-123" / "meta.json").write_text("{}")
    (tmp_path / "no_meta").mkdir()
    assert list_episodes(tmp_path) == [tmp_path / "b", tmp_path / "doom" / "a"]
    assert list_episodes(tmp_path, split="heldout") == [tmp_path / "b"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name and p.name != ".c.tmp-123"]


def test_existing_episode_needs_overwrite(tmp_path):
    write_episode(tmp_path, "ep", make_episode(num_frames=2))
    with pytest.raises(FileExistsError):
        write_episode(tmp_path, "ep", make_episode(num_frames=2))
    write_episode(tmp_path, "ep", make_episode(num_frames=3), overwrite=True)
    assert read_meta(tmp_path / "ep")["num_frames"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ep"]


@pytest.mark.parametrize("overwrite", [True, False])
def test_another_writer_finishing_the_same_episode_first_is_not_a_crash(tmp_path, monkeypatch, overwrite):
    """Two recorders given the same seeds: the other one renames its copy in between our check and our rename."""
    import astra.data.format as format_module

    root, theirs = tmp_path / "episodes", write_episode(tmp_path / "other", "ep", make_episode(num_frames=2))
    real_replace = format_module.os.replace
    calls = []

    def replace_after_the_other_writer(source, destination):
        if not calls and str(destination) == str(root / "ep"):
            calls.append(destination)
            real_replace(theirs, destination)
        return real_replace(source, destination)

    monkeypatch.setattr(format_module.os, "replace", replace_after_the_other_writer)
    if overwrite:
        write_episode(root, "ep", make_episode(num_frames=3), overwrite=True)
        assert read_meta(root / "ep")["num_frames"] == 3  # ours replaced theirs
    else:
        with pytest.raises(FileExistsError, match="already exists"):
            write_episode(root, "ep", make_episode(num_frames=3))
        assert read_meta(root / "ep")["num_frames"] == 2  # theirs is kept whole
    assert calls and sorted(p.name for p in root.iterdir()) == ["ep"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: setattr(e, "actions", e.actions[:-1]), "one row per frame"),
        (lambda e: e.poses.__setitem__((4, 0, 0), np.nan), "poses has a NaN or inf in row 4"),
        (lambda e: setattr(e, "modality", "joystick"), "unknown modality"),
        (lambda e: setattr(e, "frames", e.frames.astype(np.float32)), "uint8"),
        (lambda e: setattr(e, "split", "test"), "split"),
    ],
)
def test_write_rejects_bad_episodes(tmp_path, change, message):
    episode = make_episode(num_frames=6)
    change(episode)
    with pytest.raises(DataError, match=message):
        write_episode(tmp_path, "bad", episode)
    assert list(tmp_path.iterdir()) == []


def test_read_detects_corruption(tmp_path):
    path = write_episode(tmp_path, "ep", make_episode(num_frames=9))
    actions = np.load(path / "actions.npy")
    actions[7, 2] = np.nan
    np.save(path / "actions.npy", actions)
    with pytest.raises(DataError, match=r"actions.npy.*row 7"):
        read_episode(path)

    path = write_episode(tmp_path, "short", make_episode(num_frames=9))
    np.save(path / "actions.npy", np.zeros((8, 7), np.float32))
    with pytest.raises(DataError, match=r"actions.npy.*\[9, 7\]"):
        read_episode(path)

    np.save(path / "actions.npy", np.zeros((9, 7)).astype(str))
    with pytest.raises(DataError, match=r"actions.npy: actions must hold real numbers, got dtype <U"):
        read_episode(path)

    path = write_episode(tmp_path, "cut", make_episode(num_frames=30))
    video = path / read_meta(path)["video"]["file"]
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    with pytest.raises(DataError, match=video.name):
        read_episode(path)

    path = write_episode(tmp_path, "resized", make_episode(num_frames=2))
    meta = json.loads((path / "meta.json").read_text())
    meta["height"] = 16
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"video.*: frames are 32x48, meta.json says 16x48"):
        read_episode(path)

    path = write_episode(tmp_path, "mod", make_episode(num_frames=2))
    meta = json.loads((path / "meta.json").read_text())
    meta["modality"] = "joystick"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="meta.json: unknown modality 'joystick'"):
        read_episode(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda meta: [meta], "expected a JSON object, got list"),
        (lambda meta: {k: v for k, v in meta.items() if k != "num_frames"}, "field 'num_frames' missing"),
        (lambda meta: {**meta, "height": "64"}, "field 'height' missing or of the wrong type"),
        (lambda meta: {**meta, "fps": 0}, "fps must be positive"),
        (lambda meta: {**meta, "split": "val"}, "split must be one of"),
        (lambda meta: {**meta, "video": {}}, "video.file missing"),
        (lambda meta: {**meta, "intrinsics": [[1, 0], [0, 1]]}, "intrinsics must be null or a 3x3"),
    ],
)
def test_meta_json_with_missing_or_mistyped_fields_is_named(tmp_path, edit, message):
    path = write_episode(tmp_path, "ep", make_episode(num_frames=2))
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(DataError, match=f"meta.json: {message}"):
        read_episode(path)
