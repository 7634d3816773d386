"""Named action sequences, one vector per LATENT frame to generate (latent 0, the given image, is not included).

A preset is a list of segments (motion, share of the sequence); a motion is a dict of named intents, rendered
per modality by `render_motion` (also used by astra/actions/parse.py per video frame, with a quarter step).
Camera presets follow the paper's seven demo trajectories (docs/actions.md): yaw YAW_STEP rad and forward
FORWARD_STEP (scaled units, i.e. one typical step) per latent frame; OpenCV axes, so forward is +z and a left
turn rotates +z towards -x.
"""

from __future__ import annotations

import numpy as np

from astra.actions import geometry
from astra.actions.align import FRAMES_PER_LATENT, POSE_MODALITIES, pose_to_action
from astra.actions.modalities import KEYBOARD_KEYS, get_modality

# video frames one action sequence (string, file or preset) may ask for (~2.8 h at 10 fps): a typo fails, not memory
MAX_ACTION_FRAMES = 100_000
MAX_PRESET_LATENT_FRAMES = MAX_ACTION_FRAMES // FRAMES_PER_LATENT
YAW_STEP = 0.03  # rad per latent frame (the authors' demo trajectories)
PITCH_STEP = 0.03  # rad per latent frame
FORWARD_STEP = 1.0  # translation per latent frame, in translation_scale units
ROBOT_STEP = 1.0  # end-effector translation per latent frame, in translation_scale units
ROBOT_ROTATION_STEP = 1.0  # end-effector rotation per latent frame, in rotation_scale units
MOUSE_STEP = 1.0  # mouse delta per latent frame, in mouse_scale units

POSE_INTENTS = ("forward", "right", "up", "yaw_left", "pitch_up")
ROBOT_INTENTS = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
KEYBOARD_INTENTS = KEYBOARD_KEYS + ("mouse_dx", "mouse_dy")

Motion = dict[str, float]
Segments = list[tuple[Motion, float]]  # (motion, share of the sequence length)


def _half(first: Motion, second: Motion) -> Segments:
    return [(first, 0.5), (second, 0.5)]


CAMERA_PRESETS: dict[str, Segments] = {
    "forward": [({"forward": 1}, 1.0)],
    "turn_left": [({"yaw_left": 1}, 1.0)],
    "turn_right": [({"yaw_left": -1}, 1.0)],
    "forward_left": [({"forward": 1, "yaw_left": 1}, 1.0)],
    "forward_right": [({"forward": 1, "yaw_left": -1}, 1.0)],
    "s_curve": _half({"forward": 1, "yaw_left": 1}, {"forward": 1, "yaw_left": -1}),
    "left_then_right": _half({"yaw_left": 1}, {"yaw_left": -1}),
}
VEHICLE_PRESETS: dict[str, Segments] = {
    "straight": [({"forward": 1}, 1.0)],
    "left_turn": [({"forward": 1, "yaw_left": 1}, 1.0)],
    "right_turn": [({"forward": 1, "yaw_left": -1}, 1.0)],
}
KEYBOARD_PRESETS: dict[str, Segments] = {
    "forward": [({"forward": 1}, 1.0)],
    "turn_left": [({"turn_left": 1}, 1.0)],
    "turn_right": [({"turn_right": 1}, 1.0)],
    "strafe_right": [({"strafe_right": 1}, 1.0)],
    "explore": [
        ({"forward": 1}, 0.3),
        ({"turn_left": 1}, 0.15),
        ({"forward": 1, "strafe_right": 1}, 0.2),
        ({"turn_right": 1, "mouse_dx": 1}, 0.15),
        ({"back": 1}, 0.1),
        ({}, 0.1),
    ],
}
ROBOT_PRESETS: dict[str, Segments] = {
    "reach_forward": [({"dx": 1}, 1.0)],
    "lift": [({"gripper": 1}, 0.25), ({"dz": 1, "gripper": 1}, 0.75)],
    "close_gripper": [({"gripper": 1}, 1.0)],
}
PRESETS: dict[str, dict[str, Segments]] = {
    "camera7": CAMERA_PRESETS,
    "camera12": CAMERA_PRESETS,
    "vehicle7": VEHICLE_PRESETS,
    "keyboard_mouse": KEYBOARD_PRESETS,
    "robot7": ROBOT_PRESETS,
}
# What `astra generate` plays when no --actions are given: a preset that shows the modality's main motions.
DEFAULT_PRESET = {
    "camera7": "s_curve",
    "camera12": "s_curve",
    "vehicle7": "left_turn",
    "keyboard_mouse": "explore",
    "robot7": "lift",
}
INTENTS = {"keyboard_mouse": KEYBOARD_INTENTS, "robot7": ROBOT_INTENTS} | {m: POSE_INTENTS for m in POSE_MODALITIES}


def render_motion(motion: Motion, modality: str, fraction: float = 1.0) -> np.ndarray:
    """One action vector for `motion` lasting `fraction` of a latent frame (1/4 = one video frame).

    Key intents are held states (not scaled by `fraction`), as is the robot gripper; motions are scaled.
    """
    get_modality(modality)
    unknown = set(motion) - set(INTENTS[modality])
    if unknown:
        raise ValueError(f"{modality} has no intent {sorted(unknown)}; known: {', '.join(INTENTS[modality])}")
    if modality in POSE_MODALITIES:
        step = np.array([motion.get("right", 0.0), -motion.get("up", 0.0), motion.get("forward", 0.0)])  # y is down
        yaw = geometry.axis_angle_to_matrix(np.array([0.0, -1.0, 0.0]), np.array(motion.get("yaw_left", 0.0) * YAW_STEP * fraction))
        pitch = geometry.axis_angle_to_matrix(np.array([1.0, 0.0, 0.0]), np.array(motion.get("pitch_up", 0.0) * PITCH_STEP * fraction))
        relative = geometry.make_pose(yaw @ pitch, step * FORWARD_STEP * fraction)
        return pose_to_action(relative, modality, 1.0).astype(np.float32)
    if modality == "keyboard_mouse":
        keys = [float(motion.get(key, 0.0)) for key in KEYBOARD_KEYS]
        mouse = [motion.get(axis, 0.0) * MOUSE_STEP * fraction for axis in ("mouse_dx", "mouse_dy")]
        return np.array(keys + mouse, np.float32)
    steps = [ROBOT_STEP] * 3 + [ROBOT_ROTATION_STEP] * 3
    delta = [motion.get(name, 0.0) * step * fraction for name, step in zip(ROBOT_INTENTS[:6], steps)]
    return np.array(delta + [float(motion.get("gripper", 0.0))], np.float32)


def list_presets(modality: str) -> list[str]:
    get_modality(modality)
    return sorted(PRESETS[modality])


def get_preset(name: str, modality: str, num_latent_frames: int) -> np.ndarray:
    """float32 [num_latent_frames, width]: the preset's action for each latent frame to generate."""
    presets = PRESETS[get_modality(modality).name]
    if name not in presets:
        raise ValueError(f"no {modality} preset {name!r}; known: {', '.join(sorted(presets))}")
    if not 1 <= num_latent_frames <= MAX_PRESET_LATENT_FRAMES:
        raise ValueError(
            f"a preset's length must lie in 1 .. {MAX_PRESET_LATENT_FRAMES:,} latent frames, got {num_latent_frames}"
        )
    segments = presets[name]
    # segment boundaries by cumulative share, so the lengths always add up to num_latent_frames
    bounds = np.round(np.cumsum([share for _, share in segments]) / sum(s for _, s in segments) * num_latent_frames)
    out, start = [], 0
    for (motion, _), stop in zip(segments, bounds.astype(int)):
        out += [render_motion(motion, modality)] * (stop - start)
        start = stop
    return np.stack(out)
