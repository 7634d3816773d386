import pytest

from astra.errors import AstraError
from astra.model.config import PRESETS, AstraConfig


def test_an_unknown_preset_is_a_clear_error_the_cli_prints():
    """It was a KeyError, which `astra bench --random nope` showed as a traceback."""
    with pytest.raises(AstraError, match="unknown model preset 'nope'; known presets: .*astra-tiny") as error:
        AstraConfig.from_preset("nope")
    assert isinstance(error.value, ValueError)
    assert AstraConfig.from_preset("astra-tiny", num_layers=1) == PRESETS["astra-tiny"].replace(num_layers=1)


@pytest.mark.parametrize("change", [{"num_layers": 0}, {"num_layers": -3}, {"dim": 0}, {"num_experts": 0}])
def test_sizes_below_one_are_refused(change):
    """`num_layers: 0` built and trained a model with no transformer blocks."""
    (name, value), = change.items()
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got {value}"):
        PRESETS["astra-tiny"].replace(**change).validate()
