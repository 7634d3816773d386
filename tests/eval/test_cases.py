import numpy as np
import pytest

from astra.eval.cases import ReplayMismatch, alternative_controls, build_case, replay
from astra.worlds.base import make_world


@pytest.fixture(scope="module")
def camera():
    world = make_world("camera", size=32)
    yield world
    world.close()


def test_case_replay_is_exact_and_alternative_differs(camera):
    case = build_case(camera, seed=4, context_frames=5, future_frames=8, alternative_frames=4)
    assert case.context_frames.shape == (5, 32, 32, 3) and case.true_frames.shape == (8, 32, 32, 3)
    assert case.true_rows.shape == (8, 7) and case.alternative_rows.shape == (4, 7)
    assert case.alternative_frames.shape == (4, 32, 32, 3)
    # an independent replay of the same seed reproduces the recorded context bit for bit
    again = build_case(camera, seed=4, context_frames=5, future_frames=8, alternative_frames=4)
    for name in ("context_frames", "true_frames", "true_rows", "alternative_frames", "alternative_rows"):
        np.testing.assert_array_equal(getattr(case, name), getattr(again, name))
    # seed 4's policy moves the camera from the start; the mirrored rows move it the other way
    assert (np.abs(case.true_rows[:4, :6]).sum(1) > 0.1).all()
    np.testing.assert_allclose(case.alternative_rows[:, :3], -case.true_rows[:4, :3], atol=1e-4)
    assert all(not np.array_equal(alt, true) for alt, true in zip(case.alternative_frames, case.true_frames))
    assert case.meta["split"] == "heldout" and case.meta["seed"] == 4
    assert case.still_frames.shape == (0, 32, 32, 3) and case.still_rows.shape == (0, 7)  # not asked for


def test_still_future_is_the_simulator_left_alone(camera):
    """A camera let go renders its start frame again, bit for bit, and reports the identity motion."""
    case = build_case(camera, seed=4, context_frames=5, future_frames=4, alternative_frames=4, still_frames=8)
    assert case.still_frames.shape == (8, 32, 32, 3) and case.still_rows.shape == (8, 7)
    np.testing.assert_array_equal(case.still_frames, np.broadcast_to(case.context_frames[-1], (8, 32, 32, 3)))
    np.testing.assert_allclose(case.still_rows, np.tile([0, 0, 0, 0, 0, 0, 1.0], (8, 1)), atol=1e-6)
    assert not np.array_equal(case.true_frames[0], case.context_frames[-1])  # the policy's future does move
    with pytest.raises(ValueError, match="still_frames"):
        build_case(camera, seed=4, context_frames=5, future_frames=4, alternative_frames=4, still_frames=-1)


def test_replay_mismatch_is_detected(camera):
    class Drifting:
        """A world whose second reset differs (what ViZDoom's save/load does): must not pass as ground truth."""

        name = "camera"

        def __init__(self, world):
            self.world, self.resets = world, 0

        def reset(self, seed, split):
            self.resets += 1
            frame = self.world.reset(seed, split)
            return frame if self.resets == 1 else frame // 2

        def __getattr__(self, name):
            return getattr(self.world, name)

    with pytest.raises(ReplayMismatch, match="seed 3.*frame 0"):
        build_case(Drifting(camera), seed=3, context_frames=5, future_frames=4, alternative_frames=4)


def test_doom_case_replay_exact_and_mirror():
    controls = np.array([[1, 0, 1, 0, 1, 0, 5.0], [0, 1, 0, 0, 0, 1, -2.0]], np.float32)
    mirrored = alternative_controls("doom", controls)
    np.testing.assert_array_equal(mirrored, [[0, 1, 0, 1, 0, 1, -5.0], [1, 0, 0, 0, 1, 0, 2.0]])
    np.testing.assert_array_equal(alternative_controls("doom", mirrored), controls)
    world = make_world("doom", size=32)
    try:
        case = build_case(world, seed=1, context_frames=5, future_frames=4, alternative_frames=4)
        assert case.meta["map"] in {f"MAP{i}" for i in range(25, 33)}  # a held-out map
        frames, rows = replay(world, 1, np.zeros((2, 7), np.float32))
        assert frames.shape == (3, 32, 32, 3) and rows.shape == (2, 8)
        np.testing.assert_array_equal(frames[0], case.context_frames[0])
    finally:
        world.close()
