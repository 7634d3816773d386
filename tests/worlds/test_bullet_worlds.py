import numpy as np
import pytest

from astra.errors import AstraError
from astra.worlds.base import make_world


@pytest.mark.parametrize("name, width", [("drive", 2), ("robot", 7)])
def test_step_before_reset_is_a_clear_error(name, width):
    fresh = make_world(name)
    try:
        with pytest.raises(AstraError, match=rf"{name}: call reset\(seed, split\) before step\(\)"):
            fresh.step(np.zeros(width, np.float32))
        if name == "robot":  # its still control keeps the gripper, which only reset() sets
            with pytest.raises(AstraError, match="before step"):
                fresh.still_control()
    finally:
        fresh.close()
