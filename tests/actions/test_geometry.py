import numpy as np
import pytest
import torch

from astra.actions import geometry


def random_quaternions(n, seed=0):
    return geometry.normalize_quaternion(np.random.default_rng(seed).standard_normal((n, 4)))


def test_quaternion_matrix_round_trip_numpy_and_torch():
    quaternions = random_quaternions(500)
    rotations = geometry.quaternion_to_matrix(quaternions)
    np.testing.assert_allclose(rotations @ np.swapaxes(rotations, -1, -2), np.broadcast_to(np.eye(3), rotations.shape), atol=1e-12)
    np.testing.assert_allclose(geometry.matrix_to_quaternion(rotations), quaternions, atol=1e-12)
    as_torch = geometry.matrix_to_quaternion(geometry.quaternion_to_matrix(torch.tensor(quaternions)))
    np.testing.assert_allclose(as_torch.numpy(), quaternions, atol=1e-12)
    assert (geometry.matrix_to_quaternion(rotations)[:, 3] >= 0).all()


def test_matrix_to_quaternion_edge_rotations():
    half_turns = np.stack([np.eye(3), np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])])
    expected = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=float)
    np.testing.assert_allclose(geometry.matrix_to_quaternion(half_turns), expected, atol=1e-15)
    tiny = geometry.axis_angle_to_matrix(np.array([0.0, 0.0, 1.0]), np.array(1e-9))
    np.testing.assert_allclose(geometry.matrix_to_quaternion(tiny), [0, 0, np.sin(5e-10), np.cos(5e-10)], atol=1e-17)


def test_rpy_round_trip_and_convention():
    rpy = np.random.default_rng(1).uniform(-1.2, 1.2, (200, 3))
    np.testing.assert_allclose(geometry.matrix_to_rpy(geometry.rpy_to_matrix(rpy)), rpy, atol=1e-12)
    yaw = geometry.rpy_to_matrix(np.array([0.0, 0.0, np.pi / 2]))
    np.testing.assert_allclose(yaw @ [1.0, 0, 0], [0, 1, 0], atol=1e-15)  # yaw turns x towards y


def test_pose_helpers():
    rng = np.random.default_rng(2)
    poses = geometry.make_pose(geometry.quaternion_to_matrix(random_quaternions(8, 3)), rng.standard_normal((8, 3)))
    np.testing.assert_allclose(geometry.invert_pose(poses) @ poses, np.broadcast_to(np.eye(4), poses.shape), atol=1e-12)
    relative = geometry.relative_pose(poses[:-1], poses[1:])
    np.testing.assert_allclose(poses[:-1] @ relative, poses[1:], atol=1e-12)
    for to_vector, from_vector in [
        (geometry.pose_to_vector7, geometry.vector7_to_pose),
        (geometry.pose_to_vector12, geometry.vector12_to_pose),
    ]:
        vectors = to_vector(poses, 0.25)
        np.testing.assert_allclose(from_vector(vectors, 0.25), poses, atol=1e-12)
    np.testing.assert_allclose(geometry.pose_to_vector7(poses, 0.25)[:, :3], poses[:, :3, 3] / 0.25)
    with pytest.raises(ValueError, match=r"\[\.\.\., 4, 4\]"):
        geometry.invert_pose(np.eye(3))
