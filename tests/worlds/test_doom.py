import struct

import numpy as np
import pytest

from astra.errors import AstraError
from astra.worlds.base import make_world
from astra.worlds.doom import (
    HELDOUT_MAPS,
    RUN_UNITS_PER_TIC,
    DoomExplorer,
    DoomWorld,
    ExplorerConfig,
    doom_pose,
    list_maps,
    make_policy,
    split_maps,
    wad_path,
)

FORWARD, BACK, STRAFE_LEFT, STRAFE_RIGHT, TURN_LEFT, TURN_RIGHT, MOUSE = range(7)


def control(*keys: int, mouse: float = 0.0) -> np.ndarray:
    values = np.zeros(7, np.float32)
    values[list(keys)] = 1.0
    values[MOUSE] = mouse
    return values


@pytest.fixture(scope="module")
def world():
    world = DoomWorld(size=64, maps=["MAP01"])
    yield world
    world.close()


@pytest.fixture(scope="module")
def plain_world():
    """Starts exactly at MAP01's player start, which faces a long open path east."""
    world = DoomWorld(size=64, maps=["MAP01"], start_jitter=False)
    yield world
    world.close()


def relative(world: DoomWorld, controls: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """Pose of the last frame in the camera frame of the first, after `controls`."""
    world.reset(seed)
    start = world.pose()
    for c in controls:
        world.step(c)
    return np.linalg.inv(start) @ world.pose()


def test_wad_directory_lists_maps(tmp_path):
    assert list_maps(wad_path("freedoom2")) == [f"MAP{i:02d}" for i in range(1, 33)]
    freedoom1 = list_maps(wad_path("freedoom1"))
    assert len(freedoom1) == 36 and freedoom1[0] == "E1M1" and freedoom1[-1] == "E4M9"
    # A hand-made PWAD with one map marker followed by THINGS and a lone non-map lump.
    names = [b"MYMAP", b"THINGS", b"LINEDEFS", b"PLAYPAL"]
    directory = b"".join(struct.pack("<ii8s", 12, 0, name) for name in names)
    (tmp_path / "tiny.wad").write_bytes(b"PWAD" + struct.pack("<ii", len(names), 12) + directory)
    assert list_maps(tmp_path / "tiny.wad") == ["MYMAP"]
    (tmp_path / "bad.wad").write_bytes(b"ZIP!" + bytes(8))
    with pytest.raises(AstraError, match="not a WAD"):
        list_maps(tmp_path / "bad.wad")


def test_splits_are_disjoint_and_follow_the_heldout_list():
    wads = ("freedoom1", "freedoom2")
    train, heldout = split_maps(wads, "train"), split_maps(wads, "heldout")
    assert not set(train) & set(heldout)
    assert {name for _, name in heldout} == set(HELDOUT_MAPS["freedoom1"]) | set(HELDOUT_MAPS["freedoom2"])
    assert len(train) + len(heldout) == 36 + 32
    with pytest.raises(ValueError, match="split"):
        split_maps(wads, "test")


def test_heldout_maps_ignore_the_case_of_the_wad_name(tmp_path):
    upper = tmp_path / "FREEDOOM2.WAD"
    upper.symlink_to(wad_path("freedoom2"))
    assert {name for _, name in split_maps([str(upper)], "heldout")} == set(HELDOUT_MAPS["freedoom2"])
    assert not {name for _, name in split_maps([str(upper)], "train")} & set(HELDOUT_MAPS["freedoom2"])


def test_missing_map_or_wad_is_a_clear_error_before_vizdoom():
    with pytest.raises(AstraError, match="MAP99"):
        DoomWorld(maps=["MAP99"])
    with pytest.raises(AstraError, match="not found"):
        DoomWorld(wad="nowhere.wad")
    with pytest.raises(AstraError, match="no heldout maps"):
        DoomWorld(maps=["MAP01"]).reset(0, "heldout")


def test_same_seed_and_controls_give_identical_frames(world):
    policy = make_policy(3)
    first = [world.reset(7)]
    controls = []
    for index in range(20):
        controls.append(policy(world, index))
        first.append(world.step(controls[-1]))
    second = [world.reset(7)] + [world.step(c) for c in controls]
    assert np.abs(np.stack(first).astype(int) - np.stack(second)).max() == 0
    assert np.abs(np.stack(first[1:]).astype(int) - first[0]).max() > 0  # the policy did move the view
    other_start = world.reset(8)
    assert world.episode_meta()["seed"] == 8 and np.abs(other_start.astype(int) - first[0]).max() > 0


def test_frames_rows_and_meta(world):
    frame = world.reset(0)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    world.step(control(FORWARD, TURN_LEFT, mouse=2.5))
    np.testing.assert_array_equal(world.action_row(), [1, 0, 0, 0, 1, 0, 2.5, 0])
    meta = world.episode_meta()
    assert meta["map"] == "MAP01" and meta["wad"] == "freedoom2" and meta["frame_skip"] == 2
    assert meta["translation_scale"] == pytest.approx(2 * RUN_UNITS_PER_TIC)
    intrinsics = world.intrinsics()
    assert intrinsics[0, 2] == 32 and intrinsics[1, 1] > intrinsics[0, 0] > 0  # Doom's tall pixels
    assert make_world("doom", size=(32, 48), maps=["MAP01"]).reset(0).shape == (32, 48, 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(8), "shape"),
        (np.full(7, np.nan), "NaN"),
        (control(FORWARD) * 0.5, "0 or 1"),
        (control(mouse=400), "mouse"),
    ],
)
def test_bad_controls_are_rejected(world, bad, message):
    world.reset(0)
    with pytest.raises(ValueError, match=message):
        world.step(bad)


def test_pose_axes_match_the_controls(plain_world):
    world = plain_world
    forward = relative(world, [control(FORWARD)] * 4)
    assert forward[2, 3] > 20 and abs(forward[0, 3]) < 0.2 * forward[2, 3]  # moves along +z (camera forward)
    right = relative(world, [control(STRAFE_RIGHT)] * 4)
    assert right[0, 3] > 10 and abs(right[2, 3]) < 0.2 * right[0, 3]  # moves along +x (camera right)
    turned = relative(world, [control(mouse=10.0)] * 3)  # 30 degrees to the right
    yaw_right = np.degrees(np.arctan2(turned[0, 2], turned[2, 2]))  # new forward axis in the old camera frame
    assert yaw_right == pytest.approx(30.0, abs=0.05)
    turned_left = relative(world, [control(TURN_LEFT)] * 6)
    assert np.degrees(np.arctan2(turned_left[0, 2], turned_left[2, 2])) < -20
    assert np.allclose(doom_pose(0, 0, 0, 90, 0)[:3, 2], [0, 1, 0], atol=1e-12)  # yaw 90 = facing north


def test_running_speed_matches_the_translation_scale(plain_world):
    world = plain_world
    world.reset(0)
    positions = [world.pose()[:3, 3]]
    for _ in range(24):  # ~1.4 s of running forward
        world.step(control(FORWARD))
        positions.append(world.pose()[:3, 3])
    steps = np.linalg.norm(np.diff(np.stack(positions)[:, :2], axis=0), axis=1)
    assert steps[0] < steps[4] < steps[8]  # accelerating from rest
    assert np.median(steps[8:]) == pytest.approx(world.episode_meta()["translation_scale"], rel=0.05)


def test_policy_is_seeded_and_human_like(world):
    def rollout(seed):
        policy = make_policy(seed)
        world.reset(0)
        rows = []
        for index in range(150):
            rows.append(policy(world, index))
            world.step(rows[-1])
        return np.stack(rows)

    rows = rollout(1)
    np.testing.assert_array_equal(rows, rollout(1))
    keys = rows[:, :6]
    assert keys[:, FORWARD].mean() > keys[:, BACK].mean()  # forward bias
    assert keys.any(axis=1).mean() < 1.0  # some frames with no key (stops / pure mouse sweeps)
    changes = np.abs(np.diff(rows, axis=0)).sum(axis=1) > 0
    assert 5 < changes.sum() < 100  # keys are held for a while, not re-drawn every frame
    assert (rows[:, MOUSE] != 0).any()


def test_spins_hold_one_turn_for_seconds():
    """Held turns must be in the data: a model trained on 7-frame holds saturated under a held turn key."""

    class OpenSpace:  # no pose or depth: nothing interrupts a hold
        def pose(self):
            return None

    config = ExplorerConfig(behaviours=(("spin", 1.0),), reverse_probability=0.0)
    holds, walking = [], []
    for seed in range(8):
        policy = DoomExplorer(seed, config)
        rows = np.stack([policy(OpenSpace(), index) for index in range(400)])
        starts = np.flatnonzero(np.r_[True, np.abs(np.diff(rows, axis=0)).sum(axis=1) > 0, True])
        for begin, end in zip(starts[:-2], starts[1:-1]):  # complete holds only
            row = rows[begin]
            turn_key, mouse = row[TURN_LEFT] + row[TURN_RIGHT], row[MOUSE]
            assert (turn_key == 1) != (mouse != 0), row  # one turn: the key or a steady mouse sweep
            assert not row[[BACK, STRAFE_LEFT, STRAFE_RIGHT]].any()
            holds.append(end - begin)
            walking.append(row[FORWARD])
    low, high = config.spin_frames
    assert len(holds) > 20
    # consecutive spins can repeat the same control, so a run is at least one spin long
    assert min(holds) >= low and np.median(holds) <= high
    assert 0.2 < np.mean(walking) < 0.8
