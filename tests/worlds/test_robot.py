"""Robot world: commanded deltas move the gripper as documented, clipping is recorded, determinism, splits."""

import numpy as np
import pytest

from astra.worlds.base import make_world
from astra.worlds.robot import HELDOUT_OBJECTS, TRAIN_OBJECTS, WORKSPACE, make_policy


@pytest.fixture(scope="module")
def world():
    world = make_world("robot")
    yield world
    world.close()


def test_same_seed_same_frames(world):
    def rollout(seed):
        frames, policy = [world.reset(seed)], make_policy(seed)
        for index in range(5):
            frames.append(world.step(policy(world, index)))
        return np.stack(frames)

    first, second = rollout(2), rollout(2)
    assert first.shape == (6, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, second)
    assert not np.array_equal(first[0], rollout(5)[0])


def test_plus_x_command_moves_the_gripper_along_base_x(world):
    world.reset(0)
    start = world.end_effector_position()
    command = np.array([2.0, 0, 0, 0, 0, 0, 0], dtype=np.float32)
    for _ in range(6):
        world.step(command)
        # the row is in metres: the command times translation_scale
        scale = np.array([world.translation_scale] * 3 + [1.0] * 4)
        np.testing.assert_allclose(world.action_row(), command * scale, atol=1e-6)
    moved = world.end_effector_position() - start
    expected = 6 * 2.0 * world.translation_scale
    assert moved[0] == pytest.approx(expected, abs=0.02)
    assert abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01


def test_row_records_what_was_executed_after_clipping(world):
    world.reset(1)
    height = world.target_position[2]
    world.step(np.array([0, 0, 1000.0, 0, 0, 5.0, 3.0]))
    row = world.action_row()
    assert row[2] == pytest.approx(WORKSPACE[1, 2] - height, rel=1e-5)  # metres
    assert row[5] == pytest.approx(np.pi, rel=1e-5)  # yaw is limited to [-pi, pi]
    assert row[6] == 1.0  # gripper clipped to closed
    assert world.target_position[2] == pytest.approx(WORKSPACE[1, 2])


def test_policy_grasps_and_stays_in_the_workspace(world):
    world.reset(3)
    policy = make_policy(3)
    rows = []
    for index in range(40):
        world.step(policy(world, index))
        rows.append(world.action_row())
        assert np.all(WORKSPACE[0] - 1e-9 <= world.target_position)
        assert np.all(world.target_position <= WORKSPACE[1] + 1e-9)
    rows = np.stack(rows)
    assert np.isfinite(rows).all() and rows.shape == (40, 7)
    assert rows[:, 6].max() == 1.0  # it closed the gripper at some point
    assert np.abs(rows[:, :3]).max() > 1.0 * world.translation_scale  # and moved (rows in metres)


def test_camera_is_static_and_looks_at_the_table(world):
    world.reset(4)
    pose = world.pose()
    world.step(np.zeros(7))
    assert np.array_equal(pose, world.pose())
    table_point = np.linalg.solve(pose, np.array([0.5, 0.0, 0.0, 1.0]))[:3]
    u, v, depth = world.intrinsics() @ table_point
    assert depth > 0 and 0 <= u / depth < 64 and 0 <= v / depth < 64


def test_splits_use_disjoint_objects(world):
    train = {item.urdf for item in TRAIN_OBJECTS}
    heldout = {item.urdf for item in HELDOUT_OBJECTS}
    assert not train & heldout
    world.reset(0, "heldout")
    assert set(world.episode_meta()["objects"]) <= heldout
    world.reset(0, "train")
    assert set(world.episode_meta()["objects"]) <= train


def test_bad_control_raises(world):
    world.reset(0)
    with pytest.raises(ValueError, match=r"robot world: control must have shape \(7,\)"):
        world.step(np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        world.step(np.array([np.inf, 0, 0, 0, 0, 0, 0]))


def test_still_control_keeps_the_gripper_and_the_target(world):
    """Letting go must not open a closed gripper: the gripper command is absolute, so still keeps its value."""
    world.reset(2)
    world.step(np.array([1.0, 0, 0, 0, 0, 0, 1.0], np.float32))  # move and close
    target = world.target_position.copy()
    still = world.still_control()
    np.testing.assert_array_equal(still, [0, 0, 0, 0, 0, 0, 1.0])
    world.step(still)
    np.testing.assert_array_equal(world.target_position, target)
    np.testing.assert_allclose(world.action_row(), [0, 0, 0, 0, 0, 0, 1.0], atol=1e-7)
