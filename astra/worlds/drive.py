"""Drive world: the pybullet_data racecar in a walled arena with obstacles, seen from its own front camera
(modality vehicle7).

The native control is (steer, throttle), both in [-1, 1] (values outside are clipped). Steer > 0 turns left
(the steering hinges' target angle is steer * MAX_STEER). Throttle sets the wheels' target speed
(throttle * MAX_WHEEL_SPEED; negative reverses, 0 brakes to a stop) under a bounded motor force, so the car
accelerates, coasts into obstacles and can get pushed around. The action row is the true relative pose of
the ego camera between the previous and the current frame, in the previous camera's frame (OpenCV axes),
translation divided by `translation_scale` (about the distance of one frame at full throttle).

Held-out scenes use the odd hue bands and barrels instead of cones (`HELDOUT_OBSTACLES`).
"""

from __future__ import annotations

import math

import numpy as np

from astra.actions.geometry import pose_to_vector7, quaternion_to_matrix, relative_pose
from astra.worlds.base import Policy, World
from astra.worlds.bullet_common import (
    DEFAULT_SIZE,
    BulletWorld,
    check_control,
    random_color,
    scene_rng,
)

WHEEL_JOINTS = (2, 3, 5, 7)
STEERING_JOINTS = (4, 6)
MAX_WHEEL_SPEED = 20.0  # rad/s: about 1 m/s with the racecar's 5 cm wheels
WHEEL_FORCE = 10.0  # N m
MAX_STEER = 0.25  # radians at the steering hinges
SUBSTEPS = 24  # at 240 Hz: one 10 fps frame
SETTLE_FRAMES = 3  # let the car drop onto its wheels at reset
# Ego camera in the chassis frame (x forward, y left, z up): position (metres) and downward tilt (radians).
CAMERA_OFFSET = np.array([0.3, 0.0, 0.3])
CAMERA_TILT_DOWN = 0.15
TRAIN_OBSTACLES = ("box", "cone", "wall")
HELDOUT_OBSTACLES = ("box", "barrel", "wall")
ARENA_HALF_SIZE = (4.0, 7.0)  # metres, per episode
WALL_HEIGHT = (0.3, 0.8)
OBSTACLE_COUNT = (10, 26)
CLEAR_RADIUS = 1.2  # metres kept free around the car's start
BOX_DENSITY = 50.0  # kg/m^3: light boxes that the car can shove
CONE_MASS, BARREL_MASS = 0.3, 2.0  # kg


def camera_in_chassis() -> np.ndarray:
    """4x4 pose of the ego camera in the chassis frame: camera z = chassis forward (x), camera x = right (-y)."""
    cos, sin = math.cos(CAMERA_TILT_DOWN), math.sin(CAMERA_TILT_DOWN)
    pose = np.eye(4)
    pose[:3, 0] = [0.0, -1.0, 0.0]
    pose[:3, 1] = [-sin, 0.0, -cos]  # down, leaning forward as the camera tilts down
    pose[:3, 2] = [cos, 0.0, -sin]
    pose[:3, 3] = CAMERA_OFFSET
    return pose


class DriveWorld(BulletWorld):
    name = "drive"
    modality = "vehicle7"
    control_width = 2
    control_columns = ("steer", "throttle")

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        fov_degrees: float = 70.0,
        translation_scale: float = 0.1,
        fps: float = 10.0,
    ) -> None:
        super().__init__(size, fov_degrees, translation_scale, fps)
        self.camera_pose = camera_in_chassis()

    def reset(self, seed: int, split: str = "train") -> np.ndarray:
        rng = scene_rng(seed, split)
        client = self.client
        client.reset(timestep=1.0 / (self.fps * SUBSTEPS))
        ground = client.loadURDF("plane.urdf")
        client.changeVisualShape(ground, -1, rgbaColor=list(random_color(rng, split)))
        half_size = rng.uniform(*ARENA_HALF_SIZE)
        self._build_walls(rng, split, half_size)
        kinds = TRAIN_OBSTACLES if split == "train" else HELDOUT_OBSTACLES
        count = int(rng.integers(*OBSTACLE_COUNT))
        obstacles = [self._add_obstacle(rng, split, half_size, kinds) for _ in range(count)]
        heading = rng.uniform(-math.pi, math.pi)
        self.car = client.loadURDF("racecar/racecar.urdf", [0, 0, 0.1], client.getQuaternionFromEuler([0, 0, heading]))
        for joint in range(client.getNumJoints(self.car)):  # free-rolling joints unless we drive them
            client.setJointMotorControl2(self.car, joint, client.VELOCITY_CONTROL, targetVelocity=0, force=0)
        for _ in range(SETTLE_FRAMES):
            self._simulate(0.0, 0.0)
        self.c2w = self._camera_to_world()
        self.last_row = pose_to_vector7(np.eye(4), self.translation_scale).astype(np.float32)
        self._record_meta(seed, split, arena_half_size=half_size, obstacles=obstacles)
        return self._render()

    def _build_walls(self, rng: np.random.Generator, split: str, half_size: float) -> None:
        height, color = rng.uniform(*WALL_HEIGHT), random_color(rng, split)
        for axis in range(2):
            for side in (-1.0, 1.0):
                centre = np.array([0.0, 0.0, height / 2])
                centre[axis] = side * half_size
                half = [half_size, half_size, height / 2]
                half[axis] = 0.05
                self.client.box(half, centre, color)

    def _add_obstacle(self, rng: np.random.Generator, split: str, half_size: float, kinds) -> str:
        """One obstacle at a random free spot of the arena; returns its kind."""
        radius = rng.uniform(CLEAR_RADIUS, half_size - 0.3)
        angle = rng.uniform(-math.pi, math.pi)
        x, y, color = radius * math.cos(angle), radius * math.sin(angle), random_color(rng, split)
        kind = kinds[int(rng.integers(len(kinds)))]
        if kind == "box":
            half = rng.uniform(0.1, 0.35, size=3)
            mass = float(8 * np.prod(half) * BOX_DENSITY)
            self.client.box(half, [x, y, half[2]], color, yaw=rng.uniform(0, math.pi), mass=mass)
        elif kind == "cone":
            height = rng.uniform(0.2, 0.45)
            self.client.cone(height / 3, height, [x, y, height / 2], color, mass=CONE_MASS)
        elif kind == "barrel":
            height = rng.uniform(0.3, 0.6)
            self.client.cylinder(rng.uniform(0.1, 0.2), height, [x, y, height / 2], color, mass=BARREL_MASS)
        else:  # a free-standing wall segment
            length, height = rng.uniform(0.8, 2.0), rng.uniform(*WALL_HEIGHT)
            self.client.box([length / 2, 0.05, height / 2], [x, y, height / 2], color, yaw=rng.uniform(0, math.pi))
        return kind

    def step(self, control: np.ndarray) -> np.ndarray:
        self._check_reset()
        steer, throttle = np.clip(check_control(control, self.control_width, self.name), -1.0, 1.0)
        previous = self.c2w
        self._simulate(steer, throttle)
        self.c2w = self._camera_to_world()
        self.last_row = pose_to_vector7(relative_pose(previous, self.c2w), self.translation_scale).astype(np.float32)
        return self._render()

    def still_control(self) -> np.ndarray:
        return np.zeros(self.control_width, np.float32)  # wheels straight, target wheel speed 0: the car brakes to rest

    def _simulate(self, steer: float, throttle: float) -> None:
        client = self.client
        for joint in WHEEL_JOINTS:
            client.setJointMotorControl2(
                self.car, joint, client.VELOCITY_CONTROL, targetVelocity=throttle * MAX_WHEEL_SPEED, force=WHEEL_FORCE
            )
        for joint in STEERING_JOINTS:
            client.setJointMotorControl2(self.car, joint, client.POSITION_CONTROL, targetPosition=steer * MAX_STEER)
        for _ in range(SUBSTEPS):
            client.stepSimulation()

    def _camera_to_world(self) -> np.ndarray:
        position, orientation = self.client.getBasePositionAndOrientation(self.car)
        chassis = np.eye(4)
        chassis[:3, :3] = quaternion_to_matrix(np.array(orientation))
        chassis[:3, 3] = position
        return chassis @ self.camera_pose


# ----------------------------------------------------------------------------------------------------------
# Exploration policy

# name -> (probability, steer range, throttle range, frames range); steer sign is drawn per segment.
MANOEUVRES: dict[str, tuple[float, tuple[float, float], tuple[float, float], tuple[int, int]]] = {
    "accelerate": (0.25, (0.0, 0.1), (0.7, 1.0), (5, 20)),
    "cruise": (0.2, (0.0, 0.2), (0.4, 0.7), (5, 25)),
    "turn": (0.3, (0.4, 1.0), (0.4, 1.0), (3, 15)),
    "brake": (0.1, (0.0, 0.0), (0.0, 0.0), (3, 8)),
    "reverse": (0.15, (0.0, 1.0), (-0.8, -0.3), (5, 15)),
}
STUCK_SPEED = 0.05  # translation_scale units per frame: slower than this while pushing counts as stuck
STUCK_FRAMES = 5


class DrivePolicy(Policy):
    """Random manoeuvres held for a few frames; backs out when it has been stuck against something."""

    def __init__(self, seed: int = 0) -> None:
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.control, self.frames_left, self.stuck = np.zeros(2), 0, 0

    def __call__(self, world: World, frame_index: int) -> np.ndarray:
        moving = float(np.linalg.norm(world.action_row()[:3])) > STUCK_SPEED
        self.stuck = 0 if moving or self.control[1] == 0 or frame_index == 0 else self.stuck + 1
        if self.stuck >= STUCK_FRAMES:
            self._start("reverse" if self.control[1] > 0 else "accelerate")
        elif self.frames_left <= 0:
            names = list(MANOEUVRES)
            weights = np.array([MANOEUVRES[name][0] for name in names])
            self._start(names[int(self.rng.choice(len(names), p=weights / weights.sum()))])
        self.frames_left -= 1
        return self.control.astype(np.float32)

    def _start(self, name: str) -> None:
        _, steer, throttle, frames = MANOEUVRES[name]
        self.control = np.array([self.rng.uniform(*steer) * self.rng.choice([-1.0, 1.0]), self.rng.uniform(*throttle)])
        self.frames_left, self.stuck = int(self.rng.integers(*frames)), 0


def make_policy(seed: int) -> Policy:
    return DrivePolicy(seed)
