"""Per-frame action rows and poses -> one action vector per latent frame, and back.

The VAE maps video frames 0..4k to latent frames 0..k: latent 0 covers frame 0, latent c >= 1 covers frames
4c-3..4c. Row t of an episode's actions is the input applied going from frame t to t+1, so the motion that
produced latent c is carried by rows 4c-4..4c-1 and by the pose change from frame 4c-4 to frame 4c.
Latent 0 gets the identity action (nothing happened before it). Episodes whose length is not 4k+1 are cropped
to the longest 4k+1 prefix. Scales come from the episode's meta (DEFAULT_SCALES when absent).
See docs/actions.md.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from astra.actions import geometry
from astra.actions.modalities import KEYBOARD_KEYS, check_action_values, get_modality

FRAMES_PER_LATENT = 4  # the VAE's temporal compression
POSE_MODALITIES = ("camera7", "camera12", "vehicle7")
MIN_QUATERNION_NORM = 1e-6
MAX_ROTATION_ERROR = 1e-3  # camera12 rows: largest |R R^T - I| or |det R - 1| taken as a rotation (float32 rows drift)
DEFAULT_SCALES = {
    "translation_scale": 1.0,  # pose and robot translations are divided by this (metres per unit)
    "rotation_scale": 1.0,  # robot roll/pitch/yaw deltas are divided by this (radians per unit)
    "mouse_scale": 1.0,  # summed mouse deltas are divided by this (pixels or degrees per unit)
}
NUM_KEYS = len(KEYBOARD_KEYS)


def scales_from_meta(meta: Mapping | None) -> dict[str, float]:
    """The three scales, taken from an episode's meta where present, else DEFAULT_SCALES."""
    meta = meta or {}
    scales = {name: float(meta.get(name, default)) for name, default in DEFAULT_SCALES.items()}
    for name, value in scales.items():
        if not value > 0:
            raise ValueError(f"episode meta {name} must be positive, got {value}")
    return scales


def usable_frames(num_frames: int) -> int:
    """The longest 4k+1 prefix of an episode of `num_frames` frames."""
    if num_frames < 1:
        raise ValueError(f"an episode needs at least 1 frame to make a latent frame, got {num_frames}")
    return (num_frames - 1) // FRAMES_PER_LATENT * FRAMES_PER_LATENT + 1


def num_latent_frames(num_frames: int) -> int:
    return (usable_frames(num_frames) - 1) // FRAMES_PER_LATENT + 1


def identity_action(modality: str) -> np.ndarray:
    """The 'nothing happened' vector: zeros, with an identity rotation for the pose modalities."""
    spec = get_modality(modality)
    if modality == "camera12":
        return geometry.pose_to_vector12(np.eye(4)).astype(np.float32)
    action = np.zeros(spec.width, np.float32)
    if modality in POSE_MODALITIES:
        action[6] = 1.0  # qw of the identity quaternion
    return action


def pose_to_action(relative: np.ndarray, modality: str, translation_scale: float) -> np.ndarray:
    """Relative pose(s) [..., 4, 4] -> camera7/vehicle7/camera12 vector(s)."""
    if modality == "camera12":
        return geometry.pose_to_vector12(relative, translation_scale)
    return geometry.pose_to_vector7(relative, translation_scale)


def action_to_pose(action: np.ndarray, modality: str, translation_scale: float) -> np.ndarray:
    """camera7/vehicle7/camera12 vector(s) -> relative pose(s) [..., 4, 4]."""
    if modality == "camera12":
        return geometry.vector12_to_pose(action, translation_scale)
    return geometry.vector7_to_pose(action, translation_scale)


def integrate_rows(rows: np.ndarray, modality: str, translation_scale: float, start_pose=None) -> np.ndarray:
    """Compose relative motions [N, width] into N+1 camera-to-world poses (pose n+1 = pose n @ motion n)."""
    poses = [np.eye(4) if start_pose is None else np.asarray(start_pose, dtype=np.float64)]
    for motion in action_to_pose(np.asarray(rows, dtype=np.float64), modality, translation_scale):
        poses.append(poses[-1] @ motion)
    return np.stack(poses)


def _window_rows(rows: np.ndarray, num_latents: int) -> np.ndarray:
    """Rows 4c-4..4c-1 for every latent c >= 1, as [num_latents - 1, 4, width]."""
    used = rows[: (num_latents - 1) * FRAMES_PER_LATENT]
    return used.reshape(num_latents - 1, FRAMES_PER_LATENT, rows.shape[-1])


def latent_actions(
    modality: str,
    rows: np.ndarray,
    poses: np.ndarray | None = None,
    meta: Mapping | None = None,
    where: str | None = None,
) -> np.ndarray:
    """Per-frame rows [T, width] (and poses [T, 4, 4]) -> float32 [k+1, width], one vector per latent frame.

    Pose modalities use `poses` when given (T_rel = inv(T[4c-4]) @ T[4c]); without poses their per-frame rows
    (relative motions, translations already divided by translation_scale) are composed into poses first.
    keyboard_mouse: key columns = fraction of the 4 rows each key is held, mouse = summed delta / mouse_scale.
    robot7: summed xyz / translation_scale, summed rpy / rotation_scale, gripper = the window's last row.
    Errors (ValueError) name the rows by `where` (default "<modality> rows").
    """
    spec = get_modality(modality)
    where = where or f"{modality} rows"
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != spec.width:
        raise ValueError(f"{where} must have shape [T, {spec.width}], got {list(rows.shape)}")
    check_action_values(rows, where)
    if poses is None and "qw" in spec.columns:  # a zero quaternion is no rotation at all, not the identity
        quaternion = [spec.columns.index(name) for name in ("qx", "qy", "qz", "qw")]
        bad = np.flatnonzero(np.linalg.norm(rows[:, quaternion], axis=1) < MIN_QUATERNION_NORM)
        if len(bad):
            raise ValueError(
                f"{where}: row {int(bad[0])} has a zero-length rotation quaternion (qx, qy, qz, qw); "
                "no rotation is (0, 0, 0, 1)"
            )
    if poses is None and modality == "camera12":  # any other 3x3 block would scale, shear or mirror the composed poses
        rotation = rows.reshape(-1, 3, 4)[:, :, :3]
        error = np.maximum(
            np.abs(rotation @ rotation.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2)),
            np.abs(np.linalg.det(rotation) - 1.0),
        )
        bad = np.flatnonzero(error > MAX_ROTATION_ERROR)
        if len(bad):
            raise ValueError(
                f"{where}: row {int(bad[0])}'s 3x3 block (columns 0-2, 4-6, 8-10) is not a rotation (orthonormal, "
                f"det 1, within {MAX_ROTATION_ERROR:g}); no rotation is R = I: (1, 0, 0, tx, 0, 1, 0, ty, 0, 0, 1, tz)"
            )
    scales = scales_from_meta(meta)
    num_latents = num_latent_frames(rows.shape[0])
    out = np.empty((num_latents, spec.width), np.float64)
    out[0] = identity_action(modality)
    if num_latents == 1:
        return out.astype(np.float32)

    if modality in POSE_MODALITIES:
        if poses is None:
            poses = integrate_rows(rows[: usable_frames(rows.shape[0]) - 1], modality, 1.0)
            scale = 1.0  # composed from rows that are already scaled
        else:
            poses = np.asarray(poses, dtype=np.float64)
            if poses.shape != (rows.shape[0], 4, 4):
                raise ValueError(f"poses must have shape [{rows.shape[0]}, 4, 4] (one per row), got {list(poses.shape)}")
            scale = scales["translation_scale"]
        latent_poses = poses[: usable_frames(poses.shape[0]) : FRAMES_PER_LATENT]
        relative = geometry.relative_pose(latent_poses[:-1], latent_poses[1:])
        out[1:] = pose_to_action(relative, modality, scale)
    elif modality == "keyboard_mouse":
        windows = _window_rows(rows, num_latents)
        out[1:, :NUM_KEYS] = (windows[..., :NUM_KEYS] > 0.5).mean(axis=1)
        out[1:, NUM_KEYS:] = windows[..., NUM_KEYS:].sum(axis=1) / scales["mouse_scale"]
    elif modality == "robot7":
        windows = _window_rows(rows, num_latents)
        out[1:, :3] = windows[..., :3].sum(axis=1) / scales["translation_scale"]
        out[1:, 3:6] = windows[..., 3:6].sum(axis=1) / scales["rotation_scale"]
        out[1:, 6] = windows[:, -1, 6]
    else:
        raise ValueError(f"no alignment rule for modality {modality!r}")
    return out.astype(np.float32)


def integrate_latent_actions(
    modality: str,
    actions: np.ndarray,
    start_pose: np.ndarray | None = None,
    meta: Mapping | None = None,
) -> np.ndarray:
    """Latent actions [k+1, width] of a pose modality -> camera-to-world poses [k+1, 4, 4] of latent frames.

    The inverse of `latent_actions`: pose c = pose c-1 @ motion c, starting from `start_pose` (identity by
    default); the action of latent 0 is ignored. Returns the poses of video frames 0, 4, 8, ...
    """
    if modality not in POSE_MODALITIES:
        raise ValueError(f"only pose modalities {POSE_MODALITIES} integrate into poses, got {modality!r}")
    actions = np.asarray(actions, dtype=np.float64)
    width = get_modality(modality).width
    if actions.ndim != 2 or actions.shape[1] != width or actions.shape[0] < 1:
        raise ValueError(f"{modality} latent actions must have shape [F >= 1, {width}], got {list(actions.shape)}")
    return integrate_rows(actions[1:], modality, scales_from_meta(meta)["translation_scale"], start_pose)


def authors_camera12(latent_poses: np.ndarray) -> np.ndarray:
    """Camera-to-world poses of the latent frames [k+1, 4, 4] (video frames 0, 4, 8, ...; `integrate_latent_actions`
    makes them from our actions) -> the 12-d actions the authors' checkpoint was trained on, float32 [k, 12].

    Their loader gives latent c the world-frame step to the *next* latent frame, (P[c+1] @ inv(P[c]))[:3, :]
    row-major, translations as stored (official-astra.md); ours (`latent_actions`) gives it the camera-frame step
    into it, inv(P[c-1]) @ P[c], translations divided by the episode's scale. Only a model loaded with
    `load_official_astra` wants theirs.
    """
    latent_poses = np.asarray(latent_poses, dtype=np.float64)
    if latent_poses.ndim != 3 or latent_poses.shape[1:] != (4, 4) or latent_poses.shape[0] < 2:
        raise ValueError(f"latent poses must have shape [k+1 >= 2, 4, 4], got {list(latent_poses.shape)}")
    steps = latent_poses[1:] @ np.linalg.inv(latent_poses[:-1])
    return geometry.pose_to_vector12(steps).astype(np.float32)


def convert_pose_actions(actions: np.ndarray, source: str, target: str) -> np.ndarray:
    """Re-express pose actions between layouts (camera7/vehicle7 <-> camera12), same scale."""
    for name in (source, target):
        if name not in POSE_MODALITIES:
            raise ValueError(f"{name!r} is not a pose modality {POSE_MODALITIES}")
    motion = action_to_pose(np.asarray(actions, dtype=np.float64), source, 1.0)
    return pose_to_action(motion, target, 1.0).astype(np.float32)
