"""The registry of action modalities: names, raw widths, the meaning of every column.

This is the single place that says what an action vector is. Everything that produces actions
(simulators, dataset adapters, user input, presets) and everything that consumes them (the Mixture
of Action Experts) goes through `get_modality`; raw values pass `check_action_values`.

Conventions (see docs/actions.md for the full text):
- Camera frame: OpenCV convention, x right, y down, z forward (the camera looks along +z).
- Relative motion of latent frame c is expressed in the camera frame of the *earlier* latent frame
  (c - 1): T_rel = inv(T_world_from_cam[c-1]) @ T_world_from_cam[c].
- Quaternions are unit quaternions in (qx, qy, qz, qw) order (scalar last), with qw >= 0.
- Translations are divided by the dataset's `translation_scale` (stored in its metadata) so that a
  typical step has magnitude about 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Raw action values beyond this are input errors, not motions (they overflow float32 inside the action experts).
MAX_ACTION_MAGNITUDE = 1e4
KEYBOARD_KEYS: tuple[str, ...] = ("forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right")


@dataclass(frozen=True)
class Modality:
    name: str
    width: int
    columns: tuple[str, ...]
    description: str

    def __post_init__(self) -> None:
        assert len(self.columns) == self.width, (self.name, self.columns)


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality(
            "camera7",
            7,
            ("tx", "ty", "tz", "qx", "qy", "qz", "qw"),
            "relative camera pose: translation (scaled) + unit quaternion, in the earlier camera's frame",
        ),
        Modality(
            "camera12",
            12,
            tuple(f"r{i}{j}" if j < 3 else f"t{i}" for i in range(3) for j in range(4)),
            "relative camera pose as a 3x4 [R|t] matrix, row-major, translation scaled",
        ),
        Modality(
            "robot7",
            7,
            ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"),
            "per-frame rows: end-effector delta in the robot base frame in metres and radians + gripper (0 open .. 1 closed); latent actions divide xyz by translation_scale",
        ),
        Modality(
            "keyboard_mouse",
            len(KEYBOARD_KEYS) + 2,
            KEYBOARD_KEYS + ("mouse_dx", "mouse_dy"),
            "fraction of frames each key is held inside the latent window + summed mouse delta (scaled)",
        ),
        Modality(
            "vehicle7",
            7,
            ("tx", "ty", "tz", "qx", "qy", "qz", "qw"),
            "relative ego pose of the vehicle's front camera, same layout as camera7",
        ),
    )
}


def get_modality(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise ValueError(f"unknown action modality {name!r}; known: {', '.join(MODALITIES)}") from None


def check_action_values(values: np.ndarray, where: str) -> None:
    """Raise ValueError naming the first row with a non-finite value or one beyond MAX_ACTION_MAGNITUDE."""
    values = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(values) | (np.abs(np.nan_to_num(values)) > MAX_ACTION_MAGNITUDE)
    if bad.any():
        row = int(np.argmax(bad.reshape(len(values), -1).any(1))) if values.ndim else 0
        raise ValueError(
            f"{where}: row {row} holds a non-finite value or one beyond {MAX_ACTION_MAGNITUDE:g} in magnitude"
        )
