"""The interface every simulator world implements, and the registry of worlds.

A world is driven by its *native control* (what a player or a policy does: keys held, a robot command,
steering and throttle) and reports, after each step, the *action row* of its modality (the registry's vector
that the model sees; for pose-based modalities it is derived from the true pose change). Episodes are exactly
reproducible: `reset(seed, split)` then the same controls give the same frames (used for counterfactual ground
truth in evaluation, because simulator save/load is not reliable for ViZDoom).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

WORLDS: dict[str, str] = {
    "doom": "astra.worlds.doom:DoomWorld",
    "robot": "astra.worlds.robot:RobotWorld",
    "camera": "astra.worlds.camera:CameraWorld",
    "drive": "astra.worlds.drive:DriveWorld",
}

SPLITS = ("train", "heldout")


class World(ABC):
    name: str
    modality: str  # key of astra.actions.modalities.MODALITIES
    control_width: int  # width of the native control vector passed to step()
    control_columns: tuple[str, ...]
    fps: float

    @abstractmethod
    def reset(self, seed: int, split: str = "train") -> np.ndarray:
        """Start a new episode (scene/map/camera chosen from `seed` within `split`); return the first frame
        (uint8 [H, W, 3])."""

    @abstractmethod
    def step(self, control: np.ndarray) -> np.ndarray:
        """Apply one native control vector for one frame; return the next frame (uint8 [H, W, 3])."""

    @abstractmethod
    def action_row(self) -> np.ndarray:
        """The modality's action row (float32 [width]) for the last step()."""

    @abstractmethod
    def still_control(self) -> np.ndarray:
        """The native control of a player who lets go from the current state (no key, no motion, the gripper kept
        as it is): the ground truth of "nothing pressed" in evaluation comes from stepping with it."""

    def pose(self) -> np.ndarray | None:
        """Camera-to-world 4x4 (OpenCV camera axes: x right, y down, z forward) of the current frame, if known."""
        return None

    def intrinsics(self) -> np.ndarray | None:
        """3x3 pixel intrinsics of the rendered frames, if known."""
        return None

    def episode_meta(self) -> dict[str, Any]:
        """What identifies the current episode (map, scene, seed, scales such as translation_scale)."""
        return {}

    def close(self) -> None:
        """Release simulator resources."""


class Policy(ABC):
    """An exploration policy that a human would recognise (keys held for a while, stops, reversals, ...)."""

    @abstractmethod
    def reset(self, seed: int) -> None: ...

    @abstractmethod
    def __call__(self, world: World, frame_index: int) -> np.ndarray:
        """The native control for the next step."""


def make_world(name: str, **options: Any) -> World:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; known worlds: {', '.join(WORLDS)}")
    module_name, class_name = WORLDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(**options)
