"""Held-out evaluation cases with exact counterfactual ground truth.

A case is one held-out episode start: a context of `context_frames` video frames under the world's policy, then
the TRUE future (the policy continues), an ALTERNATIVE future of one chunk (the true controls mirrored, see
`alternative_controls`) and, when asked for, a STILL future (the player lets go: `World.still_control`). Ground
truth of every future comes from replay: reset with the same seed and apply the recorded controls again (ViZDoom's
save/load is not exact, replay from the seed is; shared/spec/feasibility.md).
Each replay asserts that the context, and for the true future every frame, matches the recording bit for bit.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from astra.errors import AstraError
from astra.worlds.base import WORLDS, Policy, World

HELDOUT = "heldout"
SEED_ATTEMPTS_PER_CASE = 3


class ReplayMismatch(AstraError):
    """Replaying the recorded controls from the same seed did not reproduce the recorded frames."""


@dataclass
class Case:
    """One evaluation case. Frames are uint8 [T, H, W, 3]; rows are the modality's per-frame action rows, where
    row j is the input that takes future frame j-1 (the last context frame for j = 0) to future frame j."""

    world: str
    seed: int
    context_frames: np.ndarray  # [C, H, W, 3]; the model starts from context_frames[-1]
    true_frames: np.ndarray  # [L, H, W, 3] the policy's future
    true_rows: np.ndarray  # [L, width]
    alternative_frames: np.ndarray  # [F, H, W, 3] the mirrored future
    alternative_rows: np.ndarray  # [F, width]
    still_frames: np.ndarray  # [S, H, W, 3] the future with nothing pressed (S = 0 when not asked for)
    still_rows: np.ndarray  # [S, width]
    meta: dict[str, Any]  # world.episode_meta() of the episode (scales for the action rows)


# ------------------------------------------------------------------------------------- alternative futures
def _mirror_doom(controls: np.ndarray) -> np.ndarray:
    """forward<->back, strafe_left<->strafe_right, turn_left<->turn_right, mouse yaw negated."""
    mirrored = controls[:, [1, 0, 3, 2, 5, 4, 6]].copy()
    mirrored[:, 6] *= -1.0
    return mirrored


def _mirror_robot(controls: np.ndarray) -> np.ndarray:
    """The end-effector delta reversed and the gripper command flipped."""
    mirrored = controls.copy()
    mirrored[:, :6] *= -1.0
    mirrored[:, 6] = 1.0 - mirrored[:, 6]
    return mirrored


def _mirror_camera(controls: np.ndarray) -> np.ndarray:
    """Each relative camera motion inverted in direction: translation negated, rotation conjugated."""
    mirrored = controls.copy()
    mirrored[:, :6] *= -1.0
    return mirrored


def _mirror_drive(controls: np.ndarray) -> np.ndarray:
    """Steering and throttle negated (left <-> right, forward <-> reverse)."""
    return -controls


MIRRORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "doom": _mirror_doom,
    "robot": _mirror_robot,
    "camera": _mirror_camera,
    "drive": _mirror_drive,
}


def alternative_controls(world: str, controls: np.ndarray) -> np.ndarray:
    """A clearly different control sequence of the same length: the true controls mirrored (documented per world
    in MIRRORS). Mirroring, not another policy draw, so that the alternative differs at every frame the true
    future moves, and an idle true future gives an identical alternative (then the case is skipped and counted)."""
    if world not in MIRRORS:
        raise AstraError(f"no alternative-future rule for world {world!r}; known: {', '.join(MIRRORS)}")
    return MIRRORS[world](np.asarray(controls, dtype=np.float32)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- recording
def make_policy(world: str, seed: int) -> Policy:
    """The world module's default exploration policy."""
    module_name = WORLDS[world].split(":")[0]
    return importlib.import_module(module_name).make_policy(seed)


def replay(
    world: World, seed: int, controls: np.ndarray, split: str = HELDOUT, still_steps: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """reset(seed, split), the controls in order, then `still_steps` of the world's still control (taken from the
    state each step reaches) -> (frames [1 + N + S, H, W, 3], rows [N + S, width])."""
    frames, rows = [world.reset(seed, split)], []

    def step(control: np.ndarray) -> None:
        frames.append(world.step(control))
        rows.append(world.action_row())

    for control in controls:
        step(control)
    for _ in range(still_steps):
        step(world.still_control())
    return np.stack(frames), np.stack(rows).astype(np.float32)


def record_policy(
    world: World, policy: Policy, seed: int, steps: int, split: str = HELDOUT
) -> tuple[np.ndarray, np.ndarray]:
    """reset(seed, split) then `steps` policy controls -> (frames [1 + steps, ...], controls [steps, K])."""
    frames = [world.reset(seed, split)]
    policy.reset(seed)
    controls = []
    for index in range(steps):
        control = np.asarray(policy(world, index), dtype=np.float32)
        frames.append(world.step(control))
        controls.append(control)
    return np.stack(frames), np.stack(controls)


def _check_same(what: str, expected: np.ndarray, replayed: np.ndarray, world: str, seed: int) -> None:
    if expected.shape != replayed.shape or not np.array_equal(expected, replayed):
        differing = int(np.argmax((expected != replayed).reshape(len(expected), -1).any(1)))
        raise ReplayMismatch(f"{world} seed {seed}: replaying the recorded controls changed {what} frame {differing}")


def build_case(
    world: World,
    seed: int,
    context_frames: int,
    future_frames: int,
    alternative_frames: int,
    split: str = HELDOUT,
    still_frames: int = 0,
) -> Case:
    """Record one case (see the module docstring). Raises EpisodeEnded when the simulator ends the episode early.

    `split` is "heldout" for every reported number; "train" exists to tune sampling settings without touching
    the held-out episodes."""
    if context_frames < 1 or future_frames < alternative_frames or alternative_frames < 1 or still_frames < 0:
        raise ValueError(
            f"need context_frames >= 1, future_frames >= alternative_frames >= 1 and still_frames >= 0, "
            f"got {context_frames}, {future_frames}, {alternative_frames}, {still_frames}"
        )
    policy = make_policy(world.name, seed)
    recorded, controls = record_policy(world, policy, seed, context_frames - 1 + future_frames, split)
    meta = world.episode_meta()
    context_controls, true_controls = controls[: context_frames - 1], controls[context_frames - 1 :]

    replayed, rows = replay(world, seed, controls, split)
    _check_same("the true episode's", recorded, replayed, world.name, seed)

    mirrored = alternative_controls(world.name, true_controls[:alternative_frames])
    alternative, alternative_rows = replay(world, seed, np.concatenate([context_controls, mirrored]), split)
    _check_same("a context", recorded[:context_frames], alternative[:context_frames], world.name, seed)

    still, still_rows = recorded[:0], rows[:0]
    if still_frames:
        still, still_rows = replay(world, seed, context_controls, split, still_steps=still_frames)
        _check_same("a context", recorded[:context_frames], still[:context_frames], world.name, seed)

    return Case(
        world=world.name,
        seed=seed,
        context_frames=recorded[:context_frames],
        true_frames=recorded[context_frames:],
        true_rows=rows[context_frames - 1 :],
        alternative_frames=alternative[context_frames:],
        alternative_rows=alternative_rows[context_frames - 1 :],
        still_frames=still[context_frames:],
        still_rows=still_rows[context_frames - 1 :],
        meta=meta,
    )


def case_seeds(base_seed: int, count: int) -> list[int]:
    """The held-out seeds tried in order: more than `count`, since an episode that ends early is skipped."""
    return [base_seed + index for index in range(SEED_ATTEMPTS_PER_CASE * count)]
