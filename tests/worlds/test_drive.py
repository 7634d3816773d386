"""Drive world: throttle and steering move the ego camera as the vehicle7 convention says; rows match poses."""

import math

import numpy as np
import pytest

from astra.worlds.base import make_world
from astra.actions.geometry import relative_pose, vector7_to_pose
from astra.worlds.drive import HELDOUT_OBSTACLES, TRAIN_OBSTACLES, make_policy


@pytest.fixture(scope="module")
def world():
    world = make_world("drive")
    yield world
    world.close()


def drive(world, control, frames):
    rows = []
    for _ in range(frames):
        before = world.pose()
        world.step(np.asarray(control, dtype=np.float32))
        row = world.action_row()
        motion = relative_pose(before, world.pose())
        np.testing.assert_allclose(vector7_to_pose(row, world.translation_scale), motion, atol=1e-5)
        assert row[6] >= 0
        rows.append(row)
    return np.stack(rows)


def test_same_seed_same_frames(world):
    def rollout(seed):
        frames, policy = [world.reset(seed)], make_policy(seed)
        for index in range(6):
            frames.append(world.step(policy(world, index)))
        return np.stack(frames)

    first = rollout(1)
    assert first.shape == (7, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, rollout(1))
    assert not np.array_equal(first[0], rollout(2)[0])


def test_throttle_moves_forward_and_reverse_moves_back(world):
    world.reset(0)
    forward = drive(world, [0.0, 1.0], 8)
    assert forward[-1, 2] > 0.5  # about one translation_scale per frame at full throttle
    assert np.abs(forward[:, 0]).max() < 0.1  # straight: no sideways motion
    drive(world, [0.0, 0.0], 10)  # brake to a stop
    backward = drive(world, [0.0, -1.0], 8)
    assert backward[-1, 2] < -0.3


def test_still_control_brakes_the_car_to_rest(world):
    world.reset(0)
    drive(world, [0.0, 1.0], 8)
    rows = drive(world, world.still_control(), 24)
    assert rows[0, 2] > 0.1 and abs(rows[-1, 2]) < 1e-3  # still rolling when let go, at rest 24 frames later


def test_steer_left_turns_left(world):
    world.reset(0)
    start = world.pose()
    rows = drive(world, [1.0, 1.0], 10)
    # yaw about the camera's +y (down) axis is negative when turning left
    assert np.median(rows[:, 4]) < -0.01  # median: a collision may stop the car near the end
    heading = lambda pose: math.atan2(pose[1, 2], pose[0, 2])  # noqa: E731
    assert math.remainder(heading(world.pose()) - heading(start), 2 * math.pi) > 0.1  # counter-clockwise


def test_policy_rows_are_finite_and_move(world):
    world.reset(3)
    policy = make_policy(3)
    rows = []
    for index in range(30):
        world.step(policy(world, index))
        rows.append(world.action_row())
    rows = np.stack(rows)
    assert np.isfinite(rows).all() and (rows[:, 6] >= 0).all()
    assert np.abs(rows[:, 2]).max() > 0.3


def test_splits_use_their_obstacles(world):
    world.reset(5, "heldout")
    assert set(world.episode_meta()["obstacles"]) <= set(HELDOUT_OBSTACLES)
    assert set(HELDOUT_OBSTACLES) - set(TRAIN_OBSTACLES)  # held-out has an obstacle kind training never sees
    world.reset(5, "train")
    assert set(world.episode_meta()["obstacles"]) <= set(TRAIN_OBSTACLES)


def test_bad_control_raises(world):
    world.reset(0)
    with pytest.raises(ValueError, match=r"drive world: control must have shape \(2,\)"):
        world.step(np.zeros(7))
    with pytest.raises(ValueError, match="non-finite"):
        world.step(np.array([np.nan, 0.0]))
