"""Live user input -> per-frame action rows, for every world.

The browser (and `astra generate` keyboard strings) describe input as a `ControlState`: the keys held and
the mouse motion since the last frame. `controls_for(world)` turns it into (native control for the real
simulator, action row of the model's modality) so that the side-by-side mode feeds both the same input.
Rows here are *per video frame*; `astra.actions.align` turns them into one vector per latent frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from astra.actions.modalities import KEYBOARD_KEYS, get_modality

# Keys of a browser KeyboardEvent.key (lower-cased) -> the logical key they press.
BROWSER_KEYS: dict[str, str] = {
    "w": "forward",
    "arrowup": "forward",
    "s": "back",
    "arrowdown": "back",
    "a": "strafe_left",
    "d": "strafe_right",
    "q": "turn_left",
    "arrowleft": "turn_left",
    "e": "turn_right",
    "arrowright": "turn_right",
    "r": "up",
    "f": "down",
    "z": "roll_left",
    "c": "roll_right",
    "t": "tilt_up",
    "g": "tilt_down",
    " ": "grip",
}
LOGICAL_KEYS = tuple(dict.fromkeys(BROWSER_KEYS.values()))


@dataclass
class ControlState:
    """What the user is doing during one video frame."""

    keys: frozenset[str] = field(default_factory=frozenset)  # logical keys (LOGICAL_KEYS)
    mouse_dx: float = 0.0  # pixels moved since the last frame
    mouse_dy: float = 0.0

    @classmethod
    def from_browser(cls, keys: list[str], mouse_dx: float = 0.0, mouse_dy: float = 0.0) -> "ControlState":
        logical = set()
        for key in keys:
            name = str(key).lower()
            if name not in BROWSER_KEYS:
                continue  # unbound keys are ignored, like a game does
            logical.add(BROWSER_KEYS[name])
        for value, label in ((mouse_dx, "mouse_dx"), (mouse_dy, "mouse_dy")):
            if not np.isfinite(value):
                raise ValueError(f"{label} must be a finite number, got {value!r}")
        return cls(frozenset(logical), float(mouse_dx), float(mouse_dy))

    def axis(self, positive: str, negative: str) -> float:
        return float(positive in self.keys) - float(negative in self.keys)


@dataclass(frozen=True)
class ControlScales:
    """How strongly one frame of input moves things (per world; documented in docs/actions.md)."""

    mouse_degrees_per_pixel: float = 0.25
    camera_step: float = 1.0  # camera7 translation per frame, in units of translation_scale
    camera_turn_radians: float = 0.03
    robot_step: float = 1.0  # robot7 translation per frame, in units of translation_scale
    robot_turn_radians: float = 0.05
    steer: float = 1.0
    throttle: float = 1.0


def _yaw_pitch_roll_quaternion(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Unit quaternion (qx, qy, qz, qw) of a rotation in OpenCV camera axes (x right, y down, z forward).

    Yaw turns about the camera's y axis (positive = turn right), pitch about x (positive = tilt up),
    roll about z. Composition order: yaw, then pitch, then roll.
    """
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    q_yaw = np.array([0.0, sy, 0.0, cy])
    q_pitch = np.array([sp, 0.0, 0.0, cp])
    q_roll = np.array([0.0, 0.0, sr, cr])
    q = _quaternion_multiply(_quaternion_multiply(q_yaw, q_pitch), q_roll)
    return q if q[3] >= 0 else -q


def _quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def keyboard_mouse_row(state: ControlState, scales: ControlScales = ControlScales()) -> np.ndarray:
    """Doom: 6 key states + mouse yaw in degrees (positive = turn right), mouse_dy unused (0)."""
    keys = [float(name in state.keys) for name in KEYBOARD_KEYS]
    return np.array(keys + [state.mouse_dx * scales.mouse_degrees_per_pixel, 0.0], dtype=np.float32)


def camera7_row(state: ControlState, scales: ControlScales = ControlScales()) -> np.ndarray:
    """Camera: W/S dolly, A/D truck, R/F pedestal, arrows or Q/E pan, T/G tilt, mouse pans and tilts."""
    translation = scales.camera_step * np.array(
        [state.axis("strafe_right", "strafe_left"), state.axis("down", "up"), state.axis("forward", "back")]
    )
    yaw = scales.camera_turn_radians * state.axis("turn_right", "turn_left")
    yaw += np.radians(state.mouse_dx * scales.mouse_degrees_per_pixel)
    pitch = scales.camera_turn_radians * state.axis("tilt_up", "tilt_down")
    pitch -= np.radians(state.mouse_dy * scales.mouse_degrees_per_pixel)  # mouse down on screen = look down
    row = np.concatenate([translation, _yaw_pitch_roll_quaternion(yaw, pitch, 0.0)])
    return row.astype(np.float32)


def robot7_row(state: ControlState, scales: ControlScales = ControlScales(), gripper: float = 0.0) -> np.ndarray:
    """Robot: W/S +-x (away/toward), A/D +-y, R/F up/down, Q/E yaw, Z/C roll, T/G pitch; space closes."""
    translation = scales.robot_step * np.array(
        [state.axis("forward", "back"), state.axis("strafe_left", "strafe_right"), state.axis("up", "down")]
    )
    rotation = scales.robot_turn_radians * np.array(
        [state.axis("roll_right", "roll_left"), state.axis("tilt_down", "tilt_up"), state.axis("turn_left", "turn_right")]
    )
    grip = 1.0 if "grip" in state.keys else gripper
    return np.concatenate([translation, rotation, [grip]]).astype(np.float32)


def drive_control(state: ControlState, scales: ControlScales = ControlScales()) -> np.ndarray:
    """Drive: (steer in [-1, 1], positive = left; throttle in [-1, 1]) from WASD / arrows."""
    steer = scales.steer * (state.axis("strafe_left", "strafe_right") + state.axis("turn_left", "turn_right"))
    throttle = scales.throttle * state.axis("forward", "back")
    return np.clip(np.array([steer, throttle], dtype=np.float32), -1.0, 1.0)


def controls_for(world: str):
    """Return a function ControlState -> (native control for the simulator, modality row or None).

    For `drive` the modality row (vehicle7) comes from the simulator's true pose change, or, with no simulator,
    from `astra.actions.controls.vehicle7_from_control` (a kinematic bicycle model).
    """
    if world == "doom":  # native control: 6 keys + mouse yaw (the row without its unused mouse_dy)
        return lambda state: (keyboard_mouse_row(state)[:7], keyboard_mouse_row(state))
    if world == "camera":
        return lambda state: (camera7_row(state), camera7_row(state))
    if world == "robot":  # native command in units of the world's translation_scale; the row in metres
        return lambda state: (robot7_row(state), robot7_row(state) * ROBOT_ROW_FROM_COMMAND)
    if world == "drive":
        return lambda state: (drive_control(state), vehicle7_from_control(drive_control(state)))
    raise ValueError(f"unknown world {world!r}; known: doom, camera, robot, drive")


ROBOT_TRANSLATION_SCALE = 0.01  # metres per command unit of the robot world (RobotWorld's default)
ROBOT_ROW_FROM_COMMAND = np.array([ROBOT_TRANSLATION_SCALE] * 3 + [1.0] * 4, dtype=np.float32)


@dataclass(frozen=True)
class BicycleModel:
    """Approximate per-frame ego motion of the drive world's car, in units of its translation_scale."""

    speed_at_full_throttle: float = 1.0  # translation_scale units per frame
    yaw_at_full_steer: float = 0.06  # radians per frame at full speed


def vehicle7_from_control(control: np.ndarray, model: BicycleModel = BicycleModel()) -> np.ndarray:
    """vehicle7 row (camera axes: z forward, x right; yaw positive = turn right) for a (steer, throttle) control."""
    steer, throttle = float(control[0]), float(control[1])
    forward = model.speed_at_full_throttle * throttle
    yaw = -model.yaw_at_full_steer * steer * throttle  # steering left (positive) turns left (negative yaw)
    translation = np.array([forward * np.sin(yaw / 2), 0.0, forward * np.cos(yaw / 2)])
    row = np.concatenate([translation, _yaw_pitch_roll_quaternion(yaw, 0.0, 0.0)])
    get_modality("vehicle7")  # the row layout is the registry's
    return row.astype(np.float32)
