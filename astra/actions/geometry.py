"""Rotations and rigid poses for numpy arrays and torch tensors alike (same function, same result).

Conventions (docs/actions.md): quaternions are (qx, qy, qz, qw), scalar last, returned with qw >= 0. Poses are
4x4 camera-to-world matrices with OpenCV camera axes (x right, y down, z forward). Roll-pitch-yaw angles are
extrinsic rotations about x, then y, then z: R = Rz(yaw) @ Ry(pitch) @ Rx(roll) (PyBullet's convention).
Every function accepts leading batch dimensions.
"""

from __future__ import annotations

from types import ModuleType
from typing import TypeVar

import numpy as np
import torch

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _xp(value: np.ndarray | torch.Tensor) -> ModuleType:
    """numpy or torch; both accept the numpy spellings (axis=, keepdims=, concatenate, arctan2) used below."""
    return torch if isinstance(value, torch.Tensor) else np


def _check_last_dims(value: Array, dims: tuple[int, ...], name: str) -> None:
    if tuple(value.shape[-len(dims) :]) != dims:
        raise ValueError(f"{name}: expected shape [..., {', '.join(map(str, dims))}], got {tuple(value.shape)}")


def normalize_quaternion(quaternion: Array) -> Array:
    """Unit length and qw >= 0 (q and -q are the same rotation; the registry picks the qw >= 0 one)."""
    xp = _xp(quaternion)
    _check_last_dims(quaternion, (4,), "quaternion")
    unit = quaternion / xp.linalg.norm(quaternion, axis=-1, keepdims=True)
    return xp.where(unit[..., 3:4] < 0, -unit, unit)


def quaternion_to_matrix(quaternion: Array) -> Array:
    """(qx, qy, qz, qw) -> rotation matrix [..., 3, 3]; the quaternion is normalised first."""
    xp = _xp(quaternion)
    x, y, z, w = [normalize_quaternion(quaternion)[..., i] for i in range(4)]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return xp.stack([xp.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quaternion(rotation: Array) -> Array:
    """Rotation matrix [..., 3, 3] -> (qx, qy, qz, qw) with qw >= 0.

    Shepperd's method: of the four algebraically equal formulas, use the one whose divisor is largest, which
    keeps full precision for every rotation (small angles and 180-degree turns alike).
    """
    xp = _xp(rotation)
    _check_last_dims(rotation, (3, 3), "rotation")
    r = rotation
    m00, m01, m02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    m10, m11, m12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    m20, m21, m22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    # 4 * q_i^2 for i = x, y, z, w
    squares = xp.stack([1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22, 1 + m00 + m11 + m22], axis=-1)
    candidates = xp.stack(  # row i: 4 * q_i * (qx, qy, qz, qw)
        [
            xp.stack([squares[..., 0], m01 + m10, m02 + m20, m21 - m12], axis=-1),
            xp.stack([m01 + m10, squares[..., 1], m12 + m21, m02 - m20], axis=-1),
            xp.stack([m02 + m20, m12 + m21, squares[..., 2], m10 - m01], axis=-1),
            xp.stack([m21 - m12, m02 - m20, m10 - m01, squares[..., 3]], axis=-1),
        ],
        axis=-2,
    )
    best = squares == xp.amax(squares, axis=-1, keepdims=True)
    first_best = best & (xp.cumsum(best, axis=-1) == 1)  # break exact ties
    chosen = (candidates * first_best[..., None]).sum(axis=-2)
    return normalize_quaternion(chosen)


def rpy_to_matrix(rpy: Array) -> Array:
    """(roll, pitch, yaw) radians -> R = Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    xp = _xp(rpy)
    _check_last_dims(rpy, (3,), "rpy")
    cr, cp, cy = xp.cos(rpy[..., 0]), xp.cos(rpy[..., 1]), xp.cos(rpy[..., 2])
    sr, sp, sy = xp.sin(rpy[..., 0]), xp.sin(rpy[..., 1]), xp.sin(rpy[..., 2])
    rows = [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ]
    return xp.stack([xp.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_rpy(rotation: Array) -> Array:
    """Inverse of rpy_to_matrix for pitch in (-pi/2, pi/2)."""
    xp = _xp(rotation)
    _check_last_dims(rotation, (3, 3), "rotation")
    roll = xp.arctan2(rotation[..., 2, 1], rotation[..., 2, 2])
    pitch = xp.arcsin(xp.clip(-rotation[..., 2, 0], -1.0, 1.0))
    yaw = xp.arctan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return xp.stack([roll, pitch, yaw], axis=-1)


def axis_angle_to_matrix(axis: Array, angle: Array) -> Array:
    """Rotation by `angle` radians about the unit vector `axis` [..., 3] (right-hand rule), via the quaternion."""
    xp = _xp(axis)
    half = angle[..., None] / 2
    return quaternion_to_matrix(xp.concatenate([axis * xp.sin(half), xp.cos(half)], axis=-1))


def make_pose(rotation: Array, translation: Array) -> Array:
    """[..., 3, 3] and [..., 3] -> homogeneous [..., 4, 4]."""
    xp = _xp(rotation)
    top = xp.concatenate([rotation, translation[..., None]], axis=-1)
    bottom = xp.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return xp.concatenate([top, bottom], axis=-2)


def invert_pose(pose: Array) -> Array:
    """Exact rigid inverse [R^T | -R^T t] (better conditioned than a general matrix inverse)."""
    xp = _xp(pose)
    _check_last_dims(pose, (4, 4), "pose")
    rotation_t = xp.swapaxes(pose[..., :3, :3], -1, -2)
    return make_pose(rotation_t, -(rotation_t @ pose[..., :3, 3:4])[..., 0])


def relative_pose(pose_from: Array, pose_to: Array) -> Array:
    """Motion from `pose_from` to `pose_to` in `pose_from`'s camera frame: inv(T_from) @ T_to."""
    return invert_pose(pose_from) @ pose_to


def pose_to_vector7(pose: Array, translation_scale: float = 1.0) -> Array:
    """[..., 4, 4] -> [t / scale, qx, qy, qz, qw] (the camera7 / vehicle7 layout)."""
    xp = _xp(pose)
    _check_last_dims(pose, (4, 4), "pose")
    return xp.concatenate([pose[..., :3, 3] / translation_scale, matrix_to_quaternion(pose[..., :3, :3])], axis=-1)


def vector7_to_pose(vector: Array, translation_scale: float = 1.0) -> Array:
    """Inverse of pose_to_vector7."""
    _check_last_dims(vector, (7,), "camera7/vehicle7 action")
    return make_pose(quaternion_to_matrix(vector[..., 3:]), vector[..., :3] * translation_scale)


def pose_to_vector12(pose: Array, translation_scale: float = 1.0) -> Array:
    """[..., 4, 4] -> the top 3x4 [R | t / scale] flattened row-major (the camera12 layout)."""
    _check_last_dims(pose, (4, 4), "pose")
    top = pose[..., :3, :] * 1.0  # a copy, so the scaling below never writes into `pose`
    top[..., :, 3] = top[..., :, 3] / translation_scale
    return top.reshape(*top.shape[:-2], 12)


def vector12_to_pose(vector: Array, translation_scale: float = 1.0) -> Array:
    """Inverse of pose_to_vector12 (the rotation block is used as given)."""
    _check_last_dims(vector, (12,), "camera12 action")
    top = vector.reshape(*vector.shape[:-1], 3, 4)
    return make_pose(top[..., :3], top[..., 3] * translation_scale)
