import pytest

from astra.errors import AstraError
from astra.model.config import PRESETS, AstraConfig


def test_an_unknown_preset_is_a_clear_error_the_cli_prints():
    """It was a KeyError, which `astra bench --random nope` showed as a traceback."""
    with pytest.raises(AstraError, match="unknown model preset 'nope'; known presets: .*astra-tiny") as error:
        AstraConfig.from_preset("nope")
    assert isinstance(error.value, ValueError)
    assert AstraConfig.from_preset("astra-tiny", num_layers=1) == PRESETS["astra-tiny"].replace(num_layers=1)
