import numpy as np
import pytest

from astra.actions import align, geometry


def random_trajectory(num_frames, seed=0, step=0.3):
    """Camera-to-world poses of a camera that moves and turns a little every frame."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.normal(0, step, (num_frames - 1, 3)), rng.normal(0, 0.05, (num_frames - 1, 3))], 1)
    motions = geometry.make_pose(geometry.rpy_to_matrix(rows[:, 3:]), rows[:, :3])
    poses = [geometry.make_pose(geometry.rpy_to_matrix(rng.normal(0, 1, 3)), rng.normal(0, 5, 3))]
    for motion in motions:
        poses.append(poses[-1] @ motion)
    return np.stack(poses)


def test_frame_counts_and_crop():
    assert [align.usable_frames(t) for t in (1, 4, 5, 8, 9, 12)] == [1, 1, 5, 5, 9, 9]
    assert align.num_latent_frames(33) == 9
    with pytest.raises(ValueError, match="at least 1 frame"):
        align.usable_frames(0)


@pytest.mark.parametrize("modality", ["camera7", "camera12", "vehicle7"])
def test_pose_round_trip(modality):
    poses = random_trajectory(19)  # 19 frames: cropped to 17 -> 5 latent frames
    meta = {"translation_scale": 0.5}
    rows = np.zeros((19, 12 if modality == "camera12" else 7), np.float32)
    actions = align.latent_actions(modality, rows, poses, meta)
    assert actions.shape == (5, rows.shape[1]) and actions.dtype == np.float32
    np.testing.assert_array_equal(actions[0], align.identity_action(modality))
    expected = geometry.relative_pose(poses[0], poses[4])
    np.testing.assert_allclose(align.action_to_pose(actions[1].astype(np.float64), modality, 0.5), expected, atol=1e-5)
    integrated = align.integrate_latent_actions(modality, actions, start_pose=poses[0], meta=meta)
    np.testing.assert_allclose(integrated, poses[0:17:4], atol=1e-4)  # float32 storage of the actions
    exact = align.pose_to_action(geometry.relative_pose(poses[0:13:4], poses[4:17:4]), modality, 0.5)
    np.testing.assert_allclose(align.integrate_rows(exact, modality, 0.5, poses[0]), poses[0:17:4], atol=1e-10)


def test_pose_rows_without_poses_are_composed():
    poses = random_trajectory(9, seed=4)
    rows = geometry.pose_to_vector7(geometry.relative_pose(poses[:-1], poses[1:]), 2.0)
    rows = np.concatenate([rows, align.identity_action("camera7")[None]])  # last row: held after the last frame
    from_rows = align.latent_actions("camera7", rows)
    from_poses = align.latent_actions("camera7", rows, poses, {"translation_scale": 2.0})
    np.testing.assert_allclose(from_rows, from_poses, atol=1e-6)


def test_keyboard_fractions_and_mouse_sums():
    rows = np.zeros((9, 8), np.float32)
    rows[0:3, 0] = 1  # forward held for 3 of the 4 frames of latent 1
    rows[4:8, 4] = 1  # turn_left for all of latent 2
    rows[8, 1] = 1  # row 8 is after the last frame: ignored
    rows[:, 6] = np.arange(9)  # mouse dx
    rows[:, 7] = -1
    actions = align.latent_actions("keyboard_mouse", rows, meta={"mouse_scale": 2.0})
    np.testing.assert_array_equal(actions[0], np.zeros(8))
    np.testing.assert_allclose(actions[1], [0.75, 0, 0, 0, 0, 0, (0 + 1 + 2 + 3) / 2, -2])
    np.testing.assert_allclose(actions[2], [0, 0, 0, 0, 1, 0, (4 + 5 + 6 + 7) / 2, -2])


def test_robot_sums_and_gripper_state():
    rows = np.zeros((9, 7), np.float32)
    rows[:, 0] = 0.01
    rows[:, 5] = 0.1
    rows[3, 6] = 1.0  # gripper closed at the end of window 1 only
    actions = align.latent_actions("robot7", rows, meta={"translation_scale": 0.02, "rotation_scale": 0.2})
    np.testing.assert_allclose(actions[1:, 0], [2.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(actions[1:, 5], [2.0, 2.0], rtol=1e-6)
    np.testing.assert_array_equal(actions[:, 6], [0, 1, 0])


def test_validation_errors():
    with pytest.raises(ValueError, match=r"\[T, 8\]"):
        align.latent_actions("keyboard_mouse", np.zeros((9, 7)))
    with pytest.raises(ValueError, match="row 3"):
        rows = np.zeros((9, 7))
        rows[3, 1] = np.nan
        align.latent_actions("robot7", rows)
    with pytest.raises(ValueError, match="poses must have shape"):
        align.latent_actions("camera7", np.zeros((9, 7)), np.zeros((8, 4, 4)))
    with pytest.raises(ValueError, match="unknown action modality"):
        align.latent_actions("joystick", np.zeros((9, 7)))
    with pytest.raises(ValueError, match="mouse_scale must be positive"):
        align.latent_actions("keyboard_mouse", np.zeros((9, 8)), meta={"mouse_scale": 0})
    identity = np.tile([0, 0, 0, 0, 0, 0, 1.0], (9, 1))
    identity[2, 3:] = 0.0  # a zero quaternion is no rotation at all (it would divide by zero)
    with pytest.raises(ValueError, match="row 2 has a zero-length rotation quaternion"):
        align.latent_actions("vehicle7", identity)


def test_convert_pose_actions_round_trip():
    poses = random_trajectory(5, seed=7)
    seven = geometry.pose_to_vector7(geometry.relative_pose(poses[:-1], poses[1:]))
    twelve = align.convert_pose_actions(seven, "camera7", "camera12")
    np.testing.assert_allclose(align.convert_pose_actions(twelve, "camera12", "camera7"), seven, atol=1e-5)


def test_authors_camera12_is_the_world_frame_step_to_the_next_latent():
    """A camera yawed 90 degrees walking forward along its own view axis: our camera-frame action says "forward"
    (+z), the authors' world-frame one says where forward points in the world (+x here), one latent earlier."""
    yaw = geometry.make_pose(np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]), np.zeros(3))  # camera z -> world x
    poses = np.stack([yaw @ geometry.make_pose(np.eye(3), np.array([0, 0, 0.5 * t])) for t in range(17)])
    ours = align.latent_actions("camera12", np.zeros((17, 12)), poses=poses)
    theirs = align.authors_camera12(poses[::4])
    assert ours.shape == (5, 12) and theirs.shape == (4, 12)
    np.testing.assert_allclose(geometry.vector12_to_pose(ours[1])[:3, 3], [0, 0, 2.0], atol=1e-6)
    np.testing.assert_allclose(geometry.vector12_to_pose(theirs[0])[:3, 3], [2.0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(geometry.vector12_to_pose(theirs[0])[:3, :3], np.eye(3), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[k\+1 >= 2, 4, 4\]"):
        align.authors_camera12(poses[:1])


def test_camera12_rows_must_hold_rotations():
    poses = random_trajectory(9, seed=3)
    rows = geometry.pose_to_vector12(geometry.relative_pose(poses[:-1], poses[1:])).astype(np.float32)
    rows = np.concatenate([rows, align.identity_action("camera12")[None]])
    assert align.latent_actions("camera12", rows).shape == (3, 12)  # float32 rotations pass
    with pytest.raises(ValueError, match=r"row 0's 3x3 block .* is not a rotation"):
        align.latent_actions("camera12", np.zeros((9, 12)))
    mirrored = rows.copy()
    mirrored[5, 0:3] *= -1  # orthonormal, but det -1: a reflection
    with pytest.raises(ValueError, match=r"camera12 rows: row 5's 3x3 block"):
        align.latent_actions("camera12", mirrored)
