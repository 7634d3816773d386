"""Camera world: conventions of poses, rows and rendering (OpenCV axes), determinism, splits, bad input."""

import math

import numpy as np
import pytest

from astra.worlds.base import make_world
from astra.actions.geometry import relative_pose, vector7_to_pose
from astra.worlds.bullet_common import BulletClient, color_split, heading_pose, intrinsics_from_fov, random_color
from astra.worlds.camera import HELDOUT_MODELS, TRAIN_MODELS, make_policy

FORWARD = np.array([0, 0, 1, 0, 0, 0, 1], dtype=np.float32)


def yaw_row(angle: float) -> np.ndarray:
    """camera7 row turning about the camera's +y (down) axis: positive = pan right."""
    return np.array([0, 0, 0, 0, math.sin(angle / 2), 0, math.cos(angle / 2)], dtype=np.float32)


@pytest.fixture(scope="module")
def world():
    world = make_world("camera")
    yield world
    world.close()


def test_same_seed_same_frames_and_policy_rows(world):
    def rollout(seed):
        frames, policy = [world.reset(seed, "train")], make_policy(seed)
        for index in range(8):
            frames.append(world.step(policy(world, index)))
        return np.stack(frames), world.pose()

    frames_a, pose_a = rollout(3)
    frames_b, pose_b = rollout(3)
    frames_c, _ = rollout(4)
    assert frames_a.shape == (9, 64, 64, 3) and frames_a.dtype == np.uint8
    assert np.array_equal(frames_a, frames_b) and np.array_equal(pose_a, pose_b)
    assert not np.array_equal(frames_a[0], frames_c[0])


def test_forward_moves_along_camera_z_and_row_is_the_control(world):
    world.reset(0)
    before = world.pose()
    world.step(FORWARD)
    after = world.pose()
    np.testing.assert_allclose(after[:3, 3] - before[:3, 3], world.translation_scale * before[:3, 2], atol=1e-9)
    np.testing.assert_allclose(world.action_row(), FORWARD, atol=1e-6)


def test_pan_right_turns_clockwise_and_shifts_the_image_left(world):
    world.reset(1)
    before_pose = world.pose()
    before = world.step(np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float32))  # identity step: the same view
    angle = 0.1
    after = world.step(yaw_row(angle))
    forward = world.pose()[:3, 2]
    # the new viewing direction leans toward the old camera's right (+x)
    assert forward @ before_pose[:3, 0] == pytest.approx(math.sin(angle), abs=1e-6)
    # seen from above (world +z up), turning right is clockwise: heading decreases
    old_heading = math.atan2(before_pose[1, 2], before_pose[0, 2])
    assert math.remainder(math.atan2(forward[1], forward[0]) - old_heading, 2 * math.pi) < 0
    # content moves left by about focal * tan(angle) pixels
    focal = world.intrinsics()[0, 0]
    shifts = range(-12, 13)
    errors = [np.abs(after[:, 12:52].astype(float) - before[:, 12 + s : 52 + s].astype(float)).mean() for s in shifts]
    best = list(shifts)[int(np.argmin(errors))]
    assert best == pytest.approx(focal * math.tan(angle), abs=2)  # after[x] == before[x + s]: moved left by s


def test_render_projects_points_where_pose_and_intrinsics_say():
    client = BulletClient()
    try:
        point = np.array([2.0, 0.7, 1.3])
        client.sphere(0.05, point, [1.0, 0.0, 0.0, 1.0])
        c2w = heading_pose(np.array([0.0, 0.0, 1.0]), 0.2, 0.1)
        size, fov = 64, 60.0
        image = client.render(c2w, size, fov).astype(int)
        mask = (image[..., 0] > 100) & (image[..., 1] < 80) & (image[..., 2] < 80)
        assert mask.sum() > 0
        rows, columns = np.nonzero(mask)
        camera_point = np.linalg.solve(c2w, np.append(point, 1.0))[:3]
        projected = intrinsics_from_fov(fov, size, size) @ camera_point
        u, v = projected[:2] / projected[2]
        assert columns.mean() + 0.5 == pytest.approx(u, abs=1.0)
        assert rows.mean() + 0.5 == pytest.approx(v, abs=1.0)
    finally:
        client.close()


def test_row_is_normalised_with_non_negative_qw(world):
    world.reset(0)
    before = world.pose()
    control = np.array([0.5, 0, 0, 0, -0.4, 0, -2.0])  # not unit length, qw < 0: a small pan right
    world.step(control)
    row = world.action_row()
    expected = np.concatenate([control[:3], -control[3:] / np.linalg.norm(control[3:])])
    np.testing.assert_allclose(row, expected, atol=1e-6)
    motion = relative_pose(before, world.pose())
    np.testing.assert_allclose(vector7_to_pose(row, world.translation_scale), motion, atol=1e-9)


def test_policy_never_rolls_and_rows_match_poses(world):
    world.reset(7, "train")
    policy = make_policy(7)
    for index in range(30):
        before = world.pose()
        world.step(policy(world, index))
        assert abs(world.pose()[2, 0]) < 1e-6  # camera x axis stays horizontal
        motion = relative_pose(before, world.pose())
        np.testing.assert_allclose(vector7_to_pose(world.action_row(), world.translation_scale), motion, atol=1e-5)


def test_heldout_scenes_use_unseen_models_and_colours(world):
    train_models = {model.urdf for model in TRAIN_MODELS}
    heldout_models = {model.urdf for model in HELDOUT_MODELS}
    assert not train_models & heldout_models
    for seed in range(4):
        world.reset(seed, "heldout")
        kinds = set(world.episode_meta()["objects"])
        assert not kinds & train_models
    rng = np.random.default_rng(0)
    for split in ("train", "heldout"):
        assert {color_split(random_color(rng, split)) for _ in range(50)} == {split}


@pytest.mark.parametrize(
    "control, message",
    [
        (np.zeros(6), "shape"),
        (np.array([0, 0, np.nan, 0, 0, 0, 1]), "non-finite"),
        (np.zeros(7), "zero norm"),
    ],
)
def test_bad_controls_raise_clear_errors(world, control, message):
    world.reset(0)
    with pytest.raises(ValueError, match=message):
        world.step(control)


def test_bad_seed_or_split_raise(world):
    with pytest.raises(ValueError, match="split"):
        world.reset(0, "test")
    with pytest.raises(ValueError, match="seed"):
        world.reset(-1)
    with pytest.raises(ValueError, match="size"):
        make_world("camera", size=3)
