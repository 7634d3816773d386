"""Camera world: a free camera moving through varied static PyBullet scenes (modality camera7).

The native control *is* the camera7 row: the camera's motion expressed in its current frame (OpenCV axes:
x right, y down, z forward), translation in units of `translation_scale` metres, rotation as a unit quaternion
(qx, qy, qz, qw). A rotation about the camera's +y axis turns it right (pan right), about +x tilts it up
(the signs of `astra.actions.controls`). The pose is integrated exactly: c2w <- c2w @ [R | t * scale].

Scenes: a tinted ground plane plus 8-18 objects (boxes, pillars, spheres, scaled pybullet_data models) placed
by one of `LAYOUTS`. Held-out scenes use the odd hue bands and `HELDOUT_MODELS`, never seen in training.
"""

from __future__ import annotations

import math

import numpy as np

from astra.actions.geometry import pose_to_vector7, relative_pose, vector7_to_pose
from astra.actions.modalities import get_modality
from astra.worlds.base import Policy, World
from astra.worlds.bullet_common import (
    DEFAULT_SIZE,
    BulletWorld,
    CatalogueObject,
    check_control,
    check_quaternion,
    heading_pose,
    random_color,
    scene_rng,
)

LAYOUTS = ("scatter", "grid", "ring", "corridor")
TRAIN_MODELS = (CatalogueObject("duck_vhacd.urdf", 6.0), CatalogueObject("lego/lego.urdf", 14.0))
HELDOUT_MODELS = (CatalogueObject("teddy_vhacd.urdf", 6.0), CatalogueObject("objects/mug.urdf", 5.0))
CLEAR_RADIUS = 1.5  # metres kept free of objects around the camera's start
SCENE_RADIUS = 7.0  # objects lie within this distance of the origin
START_HEIGHT = (0.8, 1.6)  # metres
START_PITCH = (-0.3, -0.05)  # radians (negative = looking down)
IDENTITY_ROW = np.array([0, 0, 0, 0, 0, 0, 1], dtype=np.float32)


class CameraWorld(BulletWorld):
    name = "camera"
    modality = "camera7"
    control_width = 7
    control_columns = get_modality("camera7").columns

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        fov_degrees: float = 60.0,
        translation_scale: float = 0.1,
        fps: float = 10.0,
    ) -> None:
        super().__init__(size, fov_degrees, translation_scale, fps)
        self.c2w = np.eye(4)
        self.last_row = IDENTITY_ROW.copy()

    def reset(self, seed: int, split: str = "train") -> np.ndarray:
        rng = scene_rng(seed, split)
        self.client.reset()
        layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
        ground = self.client.loadURDF("plane.urdf")
        self.client.changeVisualShape(ground, -1, rgbaColor=list(random_color(rng, split)))
        positions = layout_positions(layout, rng)
        models = TRAIN_MODELS if split == "train" else HELDOUT_MODELS
        kinds = [self._add_object(rng, split, x, y, models) for x, y in positions]
        yaw = (0.0 if rng.uniform() < 0.5 else math.pi) if layout == "corridor" else rng.uniform(-math.pi, math.pi)
        start = np.array([*rng.uniform(-0.5, 0.5, size=2), rng.uniform(*START_HEIGHT)])
        self.c2w = heading_pose(start, yaw, rng.uniform(*START_PITCH))
        self.last_row = IDENTITY_ROW.copy()
        self._record_meta(seed, split, layout=layout, objects=kinds)
        return self._render()

    def _add_object(self, rng, split: str, x: float, y: float, models) -> str:
        """One random object standing on the ground at (x, y); returns its kind for the episode metadata."""
        color = random_color(rng, split)
        kind = ("box", "pillar", "sphere", "model")[int(rng.choice(4, p=[0.4, 0.25, 0.15, 0.2]))]
        if kind == "box":
            half = rng.uniform(0.15, 0.6, size=3)
            self.client.box(half, [x, y, half[2]], color, yaw=rng.uniform(0, math.pi))
        elif kind == "pillar":
            radius, height = rng.uniform(0.1, 0.35), rng.uniform(1.0, 3.0)
            self.client.cylinder(radius, height, [x, y, height / 2], color)
        elif kind == "sphere":
            radius = rng.uniform(0.2, 0.6)
            self.client.sphere(radius, [x, y, radius], color)
        else:
            model = models[int(rng.integers(len(models)))]
            self.client.load_colored(model.urdf, [x, y, 0.0], color, rng.uniform(-math.pi, math.pi), model.scale, True)
            kind = model.urdf
        return kind

    def step(self, control: np.ndarray) -> np.ndarray:
        row = check_control(control, self.control_width, self.name)
        check_quaternion(row, self.name)
        motion = vector7_to_pose(row, self.translation_scale)  # normalises the quaternion
        self.c2w = self.c2w @ motion
        self.last_row = pose_to_vector7(motion, self.translation_scale).astype(np.float32)
        return self._render()

    def still_control(self) -> np.ndarray:
        return pose_to_vector7(np.eye(4), self.translation_scale).astype(np.float32)  # the identity motion


def layout_positions(layout: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Ground positions of the scene's objects, clear of the camera's start near the origin."""
    if layout == "scatter":
        count = int(rng.integers(10, 19))
        radius = rng.uniform(CLEAR_RADIUS, SCENE_RADIUS, size=count)
        angle = rng.uniform(-math.pi, math.pi, size=count)
        return list(zip(radius * np.cos(angle), radius * np.sin(angle)))
    if layout == "grid":
        spacing = rng.uniform(2.0, 3.0)
        cells = [(i * spacing, j * spacing) for i in range(-2, 3) for j in range(-2, 3) if (i, j) != (0, 0)]
        keep = rng.permutation(len(cells))[: int(rng.integers(8, 17))]
        return [tuple(np.add(cells[k], rng.uniform(-0.3, 0.3, size=2))) for k in sorted(keep)]
    if layout == "ring":
        count = int(rng.integers(8, 15))
        radius = rng.uniform(3.0, 5.0)
        angle = np.linspace(0, 2 * math.pi, count, endpoint=False) + rng.uniform(0, 2 * math.pi)
        return list(zip(radius * np.cos(angle), radius * np.sin(angle)))
    if layout == "corridor":
        half_width, spacing = rng.uniform(1.2, 2.0), rng.uniform(1.5, 2.5)
        along = np.arange(-SCENE_RADIUS + 1, SCENE_RADIUS - 1, spacing)
        return [(x, side * half_width) for x in along for side in (-1, 1)]
    raise ValueError(f"unknown camera layout {layout!r}; known: {LAYOUTS}")


# ----------------------------------------------------------------------------------------------------------
# Exploration policy: the paper's camera presets (pan, tilt, dolly, truck, arc, stop, combinations)

# name -> (probability, (yaw rate [rad/frame, + = pan right], pitch rate [rad/frame, + = up], dolly, truck
# [units/frame, + = forward / right])); each segment scales the rates by a random speed and sign.
MOTIONS: dict[str, tuple[float, tuple[float, float, float, float]]] = {
    "stop": (0.1, (0.0, 0.0, 0.0, 0.0)),
    "pan": (0.2, (0.05, 0.0, 0.0, 0.0)),
    "tilt": (0.1, (0.0, 0.025, 0.0, 0.0)),
    "dolly": (0.25, (0.0, 0.0, 1.0, 0.0)),
    "truck": (0.1, (0.0, 0.0, 0.0, 0.8)),
    "arc": (0.1, (-0.04, 0.0, 0.0, 0.8)),  # move sideways while turning back toward the point ahead
    "dolly_pan": (0.15, (0.04, 0.0, 1.0, 0.0)),
}
SEGMENT_FRAMES = (4, 20)
PITCH_LIMITS = (-0.6, 0.35)  # radians: the policy never looks straight down or up
HEIGHT_LIMITS = (0.4, 2.5)  # metres
ROAM_RADIUS = 6.0  # beyond this the policy turns back toward the scene centre


class CameraPolicy(Policy):
    """Holds one camera motion (random speed and direction) for a random number of frames.

    Motions are planned as world-heading changes (yaw about the world's vertical, pitch, no roll) and sent as
    the camera7 row that takes the current pose there, so long pans never accumulate roll.
    """

    def __init__(self, seed: int = 0) -> None:
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.frames_left = 0
        self.rates = np.zeros(4)

    def __call__(self, world: World, frame_index: int) -> np.ndarray:
        c2w = world.pose()
        position, forward = c2w[:3, 3], c2w[:3, 2]
        yaw, pitch = math.atan2(forward[1], forward[0]), math.asin(np.clip(forward[2], -1, 1))
        if self.frames_left <= 0:
            self._new_segment()
        self.frames_left -= 1
        yaw_rate, pitch_rate, dolly, truck = self.rates
        if np.linalg.norm(position[:2]) > ROAM_RADIUS:  # head home: turn toward the centre, then move forward
            error = math.remainder(math.atan2(-position[1], -position[0]) - yaw, 2 * math.pi)
            yaw_rate, pitch_rate, truck = -float(np.clip(error, -0.08, 0.08)), 0.0, 0.0
            dolly = 1.0 if abs(error) < 0.5 else 0.0
        new_yaw = yaw - yaw_rate  # turning right (positive rate) is clockwise seen from above
        new_pitch = float(np.clip(pitch + pitch_rate, *PITCH_LIMITS))
        heading = np.array([math.cos(yaw), math.sin(yaw), 0.0])
        right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        scale = world.translation_scale
        new_position = position + scale * (dolly * heading + truck * right)
        new_position[2] = np.clip(new_position[2], *HEIGHT_LIMITS)
        target = heading_pose(new_position, new_yaw, new_pitch)
        return pose_to_vector7(relative_pose(c2w, target), scale).astype(np.float32)

    def _new_segment(self) -> None:
        weights = np.array([probability for probability, _ in MOTIONS.values()])
        _, rates = list(MOTIONS.values())[int(self.rng.choice(len(MOTIONS), p=weights / weights.sum()))]
        self.rates = np.array(rates) * self.rng.uniform(0.4, 1.5) * self.rng.choice([-1.0, 1.0])
        self.frames_left = int(self.rng.integers(*SEGMENT_FRAMES))


def make_policy(seed: int) -> Policy:
    return CameraPolicy(seed)
