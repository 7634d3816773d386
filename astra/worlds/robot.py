"""Robot world: a Franka Panda at a table with a few coloured objects (modality robot7).

The native control is the robot7 row: end-effector target delta in the robot base frame (dx, dy, dz in units of
`translation_scale` metres; droll, dpitch, dyaw in radians, added to the target's Euler angles around the
gripper-down orientation) and the gripper command (0 open .. 1 closed). The target is clipped to the workspace
and the row of what was really commanded after clipping is `action_row()`. Each frame runs inverse kinematics,
position control and `SUBSTEPS` physics steps. The camera is static for an episode, placed at a random yaw,
elevation and distance around the workspace.

Held-out scenes use `HELDOUT_OBJECTS` and the odd hue bands, never seen in training.
"""

from __future__ import annotations

import math

import numpy as np

from astra.actions.modalities import get_modality
from astra.worlds.base import Policy, World
from astra.worlds.bullet_common import (
    DEFAULT_SIZE,
    BulletWorld,
    CatalogueObject,
    check_control,
    look_at,
    random_color,
    scene_rng,
)

TRAIN_OBJECTS = (
    CatalogueObject("cube_small.urdf", 1.2),
    CatalogueObject("lego/lego.urdf", 2.0),
    CatalogueObject("duck_vhacd.urdf", 0.8),
    CatalogueObject("sphere_small.urdf", 1.0),
)
HELDOUT_OBJECTS = (
    CatalogueObject("teddy_vhacd.urdf", 0.8),
    CatalogueObject("objects/mug.urdf", 0.6),
    CatalogueObject("jenga/jenga.urdf", 0.5),
)
TABLE_POSITION = (0.5, 0.0, -0.625)  # the table top is at z = 0, the Panda's base sits on it
OBJECT_AREA = ((0.35, 0.7), (-0.25, 0.25))  # x and y ranges (metres) where objects are dropped
WORKSPACE = np.array([[0.25, -0.4, 0.02], [0.8, 0.4, 0.45]])  # end-effector target bounds (min row, max row)
ANGLE_LIMITS = np.array([0.5, 0.5, math.pi])  # |roll|, |pitch| offsets from gripper-down, |yaw|
CAMERA_TARGET = np.array([0.45, 0.0, 0.05])
CAMERA_YAW = (-1.2, 1.2)  # radians around the table, 0 = facing the robot from the far side
CAMERA_ELEVATION = (0.45, 0.95)
CAMERA_DISTANCE = (0.75, 1.1)
END_EFFECTOR_LINK = 11  # panda_grasptarget, between the fingertips
ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
FINGER_OPEN = 0.04  # metres per finger
REST_POSE = (0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.79)
ARM_FORCE, FINGER_FORCE = 240.0, 40.0
SUBSTEPS = 24  # at 240 Hz: one 10 fps frame
SETTLE_STEPS = 60  # let objects fall onto the table at reset


class RobotWorld(BulletWorld):
    name = "robot"
    modality = "robot7"
    control_width = 7
    control_columns = get_modality("robot7").columns

    def __init__(
        self,
        size: int = DEFAULT_SIZE,
        fov_degrees: float = 50.0,
        translation_scale: float = 0.01,
        fps: float = 10.0,
    ) -> None:
        super().__init__(size, fov_degrees, translation_scale, fps)

    def reset(self, seed: int, split: str = "train") -> np.ndarray:
        rng = scene_rng(seed, split)
        client = self.client
        client.reset(timestep=1.0 / (self.fps * SUBSTEPS))
        client.loadURDF("plane.urdf", [0, 0, -0.625])
        table = client.loadURDF("table/table.urdf", TABLE_POSITION, useFixedBase=True)
        client.changeVisualShape(table, -1, rgbaColor=list(random_color(rng, split)))
        self.robot = client.loadURDF("franka_panda/panda.urdf", [0, 0, 0], useFixedBase=True)
        for joint, angle in zip(ARM_JOINTS, REST_POSE):
            client.resetJointState(self.robot, joint, angle)
        for joint in FINGER_JOINTS:
            client.resetJointState(self.robot, joint, FINGER_OPEN)
        catalogue = TRAIN_OBJECTS if split == "train" else HELDOUT_OBJECTS
        self.objects, names = [], []
        for _ in range(int(rng.integers(2, 5))):
            item = catalogue[int(rng.integers(len(catalogue)))]
            position = [rng.uniform(*OBJECT_AREA[0]), rng.uniform(*OBJECT_AREA[1]), 0.05]
            color, yaw = random_color(rng, split), rng.uniform(-math.pi, math.pi)
            self.objects.append(client.load_colored(item.urdf, position, color, yaw, item.scale))
            names.append(item.urdf)
        link_state = client.getLinkState(self.robot, END_EFFECTOR_LINK)
        self.target_position = np.clip(np.array(link_state[4]), *WORKSPACE)
        self.target_angles = np.zeros(3)  # roll, pitch offsets from gripper-down; yaw
        self.gripper = 0.0
        self.last_row = np.zeros(7, dtype=np.float32)
        for _ in range(SETTLE_STEPS // SUBSTEPS + 1):
            self._drive_robot()
        camera = dict(
            yaw=rng.uniform(*CAMERA_YAW),
            elevation=rng.uniform(*CAMERA_ELEVATION),
            distance=rng.uniform(*CAMERA_DISTANCE),
        )
        direction = np.array(
            [
                math.cos(camera["elevation"]) * math.cos(camera["yaw"]),
                math.cos(camera["elevation"]) * math.sin(camera["yaw"]),
                math.sin(camera["elevation"]),
            ]
        )
        self.c2w = look_at(CAMERA_TARGET + camera["distance"] * direction, CAMERA_TARGET)
        self._record_meta(seed, split, objects=names, camera=camera)
        return self._render()

    def step(self, control: np.ndarray) -> np.ndarray:
        self._check_reset()
        command = check_control(control, self.control_width, self.name)
        position = np.clip(self.target_position + command[:3] * self.translation_scale, *WORKSPACE)
        angles = np.clip(self.target_angles + command[3:6], -ANGLE_LIMITS, ANGLE_LIMITS)
        gripper = float(np.clip(command[6], 0.0, 1.0))
        # The action row is in physical units (metres, radians), like every robot7 source (RT-1 too):
        # astra.actions.align divides by the episode's translation_scale when it builds latent actions.
        executed = np.concatenate([position - self.target_position, angles - self.target_angles, [gripper]])
        self.last_row = executed.astype(np.float32)
        self.target_position, self.target_angles, self.gripper = position, angles, gripper
        self._drive_robot()
        return self._render()

    def still_control(self) -> np.ndarray:
        """No end-effector motion, the gripper kept where it is (an absolute command: 0 would open it)."""
        self._check_reset()
        return np.array([0.0] * 6 + [self.gripper], np.float32)

    def _drive_robot(self) -> None:
        """Inverse kinematics to the target, position control of arm and fingers, one frame of physics."""
        client = self.client
        roll, pitch, yaw = self.target_angles
        orientation = client.getQuaternionFromEuler([math.pi + roll, pitch, yaw])
        joints = client.calculateInverseKinematics(
            self.robot, END_EFFECTOR_LINK, self.target_position.tolist(), orientation, maxNumIterations=50
        )
        client.setJointMotorControlArray(
            self.robot, ARM_JOINTS, client.POSITION_CONTROL, targetPositions=joints[:7], forces=[ARM_FORCE] * 7
        )
        finger = FINGER_OPEN * (1.0 - self.gripper)
        client.setJointMotorControlArray(
            self.robot, FINGER_JOINTS, client.POSITION_CONTROL, targetPositions=[finger] * 2, forces=[FINGER_FORCE] * 2
        )
        for _ in range(SUBSTEPS):
            client.stepSimulation()

    def end_effector_position(self) -> np.ndarray:
        """Where the gripper really is (metres, base frame)."""
        return np.array(self.client.getLinkState(self.robot, END_EFFECTOR_LINK)[4])

    def object_positions(self) -> list[np.ndarray]:
        return [np.array(self.client.getBasePositionAndOrientation(body)[0]) for body in self.objects]


# ----------------------------------------------------------------------------------------------------------
# Exploration policy: pick and place with misses, pauses and jitters

HOVER_HEIGHT = 0.15  # metres above the object before descending
GRASP_HEIGHT = 0.015  # metres above the object's centre where the fingers close
LIFT_HEIGHT = 0.25
MAX_STEP = 2.0  # translation per frame, in units of translation_scale
MISS_SPREAD = 0.02  # metres of aiming noise: some grasps miss
GRIP_FRAMES = (3, 7)
PAUSE_FRAMES = (2, 10)
PAUSE_PROBABILITY = 0.15
JITTER = 0.3  # random translation noise per frame, in units of translation_scale
YAW_STEP = 0.08  # radians per frame while aligning the gripper


class RobotPolicy(Policy):
    """reach -> descend -> close -> lift -> carry -> release, on a random object, with pauses and jitter."""

    PHASES = ("reach", "descend", "close", "lift", "carry", "release")

    def __init__(self, seed: int = 0) -> None:
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.phase_index, self.goal, self.wait, self.gripper, self.goal_yaw = -1, None, 0, 0.0, 0.0

    def __call__(self, world: World, frame_index: int) -> np.ndarray:
        if self.goal is None:
            self._start_phase(world, 0)
        control = np.zeros(7)
        control[6] = self.gripper
        if self.wait > 0:  # gripping, releasing or pausing: hold position
            self.wait -= 1
            if self.wait == 0:
                self._start_phase(world, self.phase_index + 1)
            return control.astype(np.float32)
        error = (self.goal - world.target_position) / world.translation_scale
        distance = float(np.linalg.norm(error))
        control[:3] = error * min(1.0, MAX_STEP / max(distance, 1e-9)) + self.rng.normal(0.0, JITTER, size=3)
        control[5] = float(np.clip(self.goal_yaw - world.target_angles[2], -YAW_STEP, YAW_STEP))
        if distance < 0.5:
            self._start_phase(world, self.phase_index + 1)
        return control.astype(np.float32)

    def _start_phase(self, world: World, index: int) -> None:
        index %= len(self.PHASES)
        self.phase_index, phase, rng = index, self.PHASES[index], self.rng
        if phase == "reach":
            objects = world.object_positions()
            self.object = objects[int(rng.integers(len(objects)))] + np.append(rng.normal(0, MISS_SPREAD, 2), 0.0)
            self.goal = self.object + [0.0, 0.0, HOVER_HEIGHT]
            self.goal_yaw = rng.uniform(-math.pi / 2, math.pi / 2)
        elif phase == "descend":
            self.goal = self.object + [0.0, 0.0, GRASP_HEIGHT]
        elif phase in ("close", "release"):
            self.gripper = 1.0 if phase == "close" else 0.0
            self.wait = int(rng.integers(*GRIP_FRAMES))
        elif phase == "lift":
            self.goal = world.target_position + [0.0, 0.0, LIFT_HEIGHT - world.target_position[2]]
        elif phase == "carry":
            self.goal = np.array([rng.uniform(*OBJECT_AREA[0]), rng.uniform(*OBJECT_AREA[1]), LIFT_HEIGHT])
        if phase not in ("close", "release") and rng.uniform() < PAUSE_PROBABILITY:
            self.wait = int(rng.integers(*PAUSE_FRAMES))  # hesitate before moving on
            self.phase_index -= 1  # the pause ends by restarting this phase
        self.goal = np.clip(self.goal, *WORKSPACE)


def make_policy(seed: int) -> Policy:
    return RobotPolicy(seed)
