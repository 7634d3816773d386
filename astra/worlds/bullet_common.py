"""What the three PyBullet worlds (robot, camera, drive) share: a headless client, OpenCV-camera rendering,
input validation, the `BulletWorld` base class, and the train / held-out palettes. Pose algebra lives in
`astra.actions.geometry`.

Camera conventions: poses are camera-to-world 4x4 matrices in OpenCV axes (x right, y down, z forward).
PyBullet renders with OpenGL view matrices (x right, y up, z backward), so `render` flips the y and z axes
before inverting. Frames are rendered on CPU with the tiny renderer: the same seed and controls give identical
frames.

Splits: the scene random generator is seeded by (seed, split), and the held-out split draws colours from hue
bands and objects from catalogue entries that the train split never uses (see `random_color` and each world's
catalogues), so every held-out scene is a combination of object / colour never seen in training.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet
import pybullet_data

from astra.errors import AstraError
from astra.worlds.base import SPLITS, World

DEFAULT_SIZE = 64
NEAR_PLANE = 0.02  # metres
FAR_PLANE = 60.0
HUE_BANDS = 12  # the colour wheel is cut into bands; train uses the even ones, held-out the odd ones
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips y (down -> up) and z (forward -> backward)


# ----------------------------------------------------------------------------------------------------------
# Validation of what callers pass in


def scene_rng(seed: int, split: str) -> np.random.Generator:
    """The generator that decides everything about a scene; same (seed, split) -> same scene."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng([int(seed), SPLITS.index(split)])


def check_control(control: np.ndarray, width: int, world: str) -> np.ndarray:
    """Return `control` as float64 [width]; raise ValueError naming the world and the problem."""
    array = np.asarray(control, dtype=np.float64)
    if array.shape != (width,):
        raise ValueError(f"{world} world: control must have shape ({width},), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{world} world: control has a non-finite value: {array.tolist()}")
    return array


def check_quaternion(row: np.ndarray, world: str) -> None:
    """A camera7 / vehicle7 row's quaternion must be normalisable."""
    if not np.linalg.norm(row[3:7]) > 1e-8:
        raise ValueError(f"{world} world: the quaternion (qx, qy, qz, qw) = {row[3:7].tolist()} has zero norm")


def check_size(size: int | tuple[int, int], world: str) -> int:
    """Frames are square: an int, or an (h, w) pair with h == w (the form the model's resolution takes)."""
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
        raise ValueError(f"{world} world: size must be an integer in [8, 1024] (or a square (h, w)), got {size!r}")
    return int(size)


# ----------------------------------------------------------------------------------------------------------
# Camera placement (rotation and pose algebra lives in astra.actions.geometry)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """OpenCV camera-to-world pose at `eye` looking at `target` with the world `up` pointing up in the image."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
    return pose


def heading_pose(position: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """OpenCV camera-to-world pose at `position` looking along world heading `yaw` (radians, counter-clockwise
    from +x about +z) tilted up by `pitch` (radians), with no roll."""
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    return look_at(position, np.asarray(position, dtype=np.float64) + forward)


def intrinsics_from_fov(fov_degrees: float, width: int, height: int) -> np.ndarray:
    """Pinhole intrinsics of PyBullet's projection: `fov_degrees` is the vertical field of view."""
    focal = 0.5 * height / math.tan(math.radians(fov_degrees) / 2)
    return np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


# ----------------------------------------------------------------------------------------------------------
# The simulator


class BulletClient:
    """One headless PyBullet physics server (several worlds can live in one process)."""

    def __init__(self) -> None:
        self.id = pybullet.connect(pybullet.DIRECT)
        self.reset()

    def __getattr__(self, name: str):
        """Forward pybullet functions with this client's id, e.g. `client.loadURDF(...)`; constants as they are."""
        function = getattr(pybullet, name)
        if not callable(function):
            return function
        return lambda *args, **kwargs: function(*args, physicsClientId=self.id, **kwargs)

    def reset(self, timestep: float = 1.0 / 240.0) -> None:
        pybullet.resetSimulation(physicsClientId=self.id)
        pybullet.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=self.id)
        pybullet.setGravity(0, 0, -9.81, physicsClientId=self.id)
        pybullet.setTimeStep(timestep, physicsClientId=self.id)

    def close(self) -> None:
        if self.id >= 0 and pybullet.isConnected(self.id):
            pybullet.disconnect(self.id)
        self.id = -1

    def render(self, c2w: np.ndarray, size: int, fov_degrees: float) -> np.ndarray:
        """uint8 [size, size, 3] image seen by the OpenCV camera `c2w`."""
        view = np.linalg.inv(c2w @ OPENGL_FROM_OPENCV)
        projection = pybullet.computeProjectionMatrixFOV(fov_degrees, 1.0, NEAR_PLANE, FAR_PLANE)
        _, _, rgba, _, _ = pybullet.getCameraImage(
            size,
            size,
            viewMatrix=view.T.reshape(-1).tolist(),  # PyBullet matrices are column-major
            projectionMatrix=projection,
            renderer=pybullet.ER_TINY_RENDERER,
            physicsClientId=self.id,
        )
        return np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3].copy()

    def box(self, half_extents, position, color, yaw: float = 0.0, mass: float = 0.0) -> int:
        """A box body; mass 0 makes it immovable."""
        shape = dict(shapeType=pybullet.GEOM_BOX, halfExtents=list(half_extents))
        return self._body(shape, shape, position, color, yaw, mass)

    def cylinder(self, radius: float, height: float, position, color, mass: float = 0.0) -> int:
        """An upright cylinder (pillars, posts)."""
        collision = dict(shapeType=pybullet.GEOM_CYLINDER, radius=radius, height=height)
        visual = dict(shapeType=pybullet.GEOM_CYLINDER, radius=radius, length=height)
        return self._body(collision, visual, position, color, 0.0, mass)

    def sphere(self, radius: float, position, color, mass: float = 0.0) -> int:
        shape = dict(shapeType=pybullet.GEOM_SPHERE, radius=radius)
        return self._body(shape, shape, position, color, 0.0, mass)

    def cone(self, radius: float, height: float, position, color, mass: float = 0.0) -> int:
        """An upright cone (traffic cone), centred at `position`; PyBullet has no cone primitive, so the
        collision shape is the convex hull of a circle and an apex and the visual is the same triangle mesh."""
        segments = 12
        angles = np.linspace(0.0, 2 * math.pi, segments, endpoint=False)
        rim = [[radius * math.cos(a), radius * math.sin(a), -height / 2] for a in angles]
        apex, base_centre = segments, segments + 1
        vertices = rim + [[0.0, 0.0, height / 2], [0.0, 0.0, -height / 2]]
        indices = []
        for i in range(segments):
            j = (i + 1) % segments
            indices += [i, j, apex, j, i, base_centre]
        collision = dict(shapeType=pybullet.GEOM_MESH, vertices=rim + [vertices[apex]])
        visual = dict(shapeType=pybullet.GEOM_MESH, vertices=vertices, indices=indices)
        return self._body(collision, visual, position, color, 0.0, mass)

    def _body(self, collision: dict, visual: dict, position, color, yaw: float, mass: float) -> int:
        return pybullet.createMultiBody(
            baseMass=mass,
            baseCollisionShapeIndex=pybullet.createCollisionShape(**collision, physicsClientId=self.id),
            baseVisualShapeIndex=pybullet.createVisualShape(**visual, rgbaColor=list(color), physicsClientId=self.id),
            basePosition=list(position),
            baseOrientation=pybullet.getQuaternionFromEuler([0.0, 0.0, yaw]),
            physicsClientId=self.id,
        )

    def load_colored(
        self, urdf: str, position, color: np.ndarray, yaw: float = 0.0, scale: float = 1.0, fixed: bool = False
    ) -> int:
        """Load a pybullet_data URDF and paint every link with `color`."""
        body = pybullet.loadURDF(
            urdf,
            list(position),
            pybullet.getQuaternionFromEuler([0.0, 0.0, yaw]),
            globalScaling=scale,
            useFixedBase=fixed,
            physicsClientId=self.id,
        )
        for link in range(-1, pybullet.getNumJoints(body, physicsClientId=self.id)):
            pybullet.changeVisualShape(body, link, rgbaColor=list(color), physicsClientId=self.id)
        return body


class BulletWorld(World):
    """What the three PyBullet worlds share: a square OpenCV camera (`c2w`, updated by each world) rendered
    through one `BulletClient`, the last action row, and the episode metadata that `reset` records."""

    def __init__(self, size: int, fov_degrees: float, translation_scale: float, fps: float) -> None:
        self.size = check_size(size, self.name)
        self.fov_degrees = float(fov_degrees)
        self.translation_scale = float(translation_scale)
        self.fps = float(fps)
        self.client = BulletClient()
        self.meta: dict[str, Any] = {}

    def _record_meta(self, seed: int, split: str, **scene: Any) -> None:
        """Episode metadata: identity, what the scene holds (`scene`), then the world's scales."""
        self.meta = dict(
            world=self.name, seed=int(seed), split=split, **scene,
            translation_scale=self.translation_scale, fps=self.fps, size=self.size, fov_degrees=self.fov_degrees,
        )  # fmt: skip

    def _check_reset(self) -> None:
        """step() moves what reset() builds (robot, car, camera); `meta` is recorded once the scene is complete."""
        if not self.meta:
            raise AstraError(f"{self.name}: call reset(seed, split) before step()")

    def _render(self) -> np.ndarray:
        return self.client.render(self.c2w, self.size, self.fov_degrees)

    def action_row(self) -> np.ndarray:
        return self.last_row.copy()

    def pose(self) -> np.ndarray:
        return self.c2w.copy()

    def intrinsics(self) -> np.ndarray:
        return intrinsics_from_fov(self.fov_degrees, self.size, self.size)

    def episode_meta(self) -> dict[str, Any]:
        return dict(self.meta)

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------------------------------------
# Scene variety, split by split


@dataclass(frozen=True)
class CatalogueObject:
    """A pybullet_data URDF and the global scaling that gives it a sensible size in a world."""

    urdf: str
    scale: float = 1.0


def random_color(rng: np.random.Generator, split: str, alpha: float = 1.0) -> np.ndarray:
    """RGBA colour whose hue lies in a band of `split` (train: even bands, held-out: odd bands)."""
    band = 2 * int(rng.integers(HUE_BANDS // 2)) + SPLITS.index(split)
    hue = (band + rng.uniform()) / HUE_BANDS
    red, green, blue = colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 0.9), rng.uniform(0.55, 0.95))
    return np.array([red, green, blue, alpha])


def color_split(color: np.ndarray) -> str:
    """Which split's hue bands `color` belongs to (used by tests and sanity checks)."""
    hue, _, _ = colorsys.rgb_to_hsv(*color[:3])
    return SPLITS[int(hue * HUE_BANDS) % 2]
