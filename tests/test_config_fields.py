from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from astra.config_fields import dataclass_from_dict
from astra.errors import AstraError, ConfigError


@dataclass(frozen=True)
class Inner:
    width: int = 1


@dataclass(frozen=True)
class Outer:
    steps: int = 1
    rate: float = 0.5
    enabled: bool = False
    name: str = "x"
    pair: tuple[int, int] = (1, 2)
    widths: tuple[int, ...] = ()
    start: str | None = None
    weights: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def test_json_values_become_the_annotated_types():
    config = dataclass_from_dict(
        Outer,
        {"steps": 3, "rate": 2, "enabled": True, "pair": [4, 5], "widths": [1, 2, 3], "start": None,
         "weights": {"doom": 1}, "extra": {"anything": [1]}, "inner": {"width": 7}},
        "Outer",
    )
    assert config == Outer(3, 2.0, True, "x", (4, 5), (1, 2, 3), None, {"doom": 1.0}, {"anything": [1]}, Inner(7))
    assert isinstance(config.rate, float) and isinstance(config.pair, tuple)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": "abc"}, r"Outer\.steps: expected an integer, got str 'abc'"),
        ({"steps": 1.5}, r"Outer\.steps: expected an integer"),
        ({"steps": True}, r"Outer\.steps: expected an integer"),
        ({"rate": math.nan}, r"Outer\.rate: expected a finite number"),
        ({"rate": "0.1"}, r"Outer\.rate: expected a number"),
        ({"enabled": "yes"}, r"Outer\.enabled: expected true or false"),
        ({"pair": 5}, r"Outer\.pair: expected a list"),
        ({"pair": [1, 2, 3]}, r"Outer\.pair: expected a list of 2 values, got 3"),
        ({"widths": [1, "a"]}, r"Outer\.widths\[1\]: expected an integer"),
        ({"start": 3}, r"Outer\.start: expected a string"),
        ({"weights": {"doom": "x"}}, r"Outer\.weights\.doom: expected a number"),
        ({"extra": 3}, r"Outer\.extra: expected an object"),
        ({"inner": {"width": "w"}}, r"Outer\.inner\.width: expected an integer"),
        ({"inner": {"height": 1}}, r"unknown Outer\.inner setting\(s\): height; known: width"),
        ({"stpes": 1}, r"unknown Outer setting\(s\): stpes"),
    ],
)
def test_wrong_kinds_are_named_by_their_dotted_path(data, message):
    with pytest.raises(ConfigError, match=message):
        dataclass_from_dict(Outer, data, "Outer")


def test_config_errors_are_user_errors_and_value_errors():
    with pytest.raises(AstraError):
        dataclass_from_dict(Outer, [], "Outer")
    assert issubclass(ConfigError, ValueError)
