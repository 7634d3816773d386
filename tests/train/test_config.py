import argparse
import json

import pytest

from astra.errors import AstraError
from astra.train.cli import parse_overrides, resolve_config
from astra.train.config import PRESETS, TrainConfig, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_round_trip_through_json(name):
    config = get_preset(name)
    config.validate()
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config


def test_wan_preset_follows_the_paper_recipe():
    config = get_preset("wan2.1-t2v-1.3b")
    assert config.lr == 1e-5 and config.flow.shift == 5.0 and config.parallel == "fsdp"
    assert get_preset("astra-small").world_weights.keys() == {"doom", "robot", "camera", "drive"}


def test_updates_reach_nested_settings_and_reject_unknown_keys():
    config = get_preset("astra-tiny").with_updates(parse_overrides(["flow.shift=3", "lr=0.01", "data=foo"]))
    assert config.flow.shift == 3 and config.lr == 0.01 and config.data == "foo"
    with pytest.raises(AstraError, match="unknown TrainConfig setting"):
        config.with_updates({"learning_rate": 1})
    with pytest.raises(AstraError, match="TrainConfig.flow"):
        config.with_updates({"flow.shfit": 1})
    with pytest.raises(AstraError, match="KEY=VALUE"):
        parse_overrides(["lr"])
    with pytest.raises(AstraError, match="noisy_memory_range"):
        config.with_updates({"noisy_memory_range": [0.5, 0.2]}).validate()


@pytest.mark.parametrize(
    "item, message",
    [
        ("steps=abc", "TrainConfig.steps: expected an integer"),
        ("lr=nan", "TrainConfig.lr: expected a number"),
        ("history_range=5", "TrainConfig.history_range: expected a list"),
        ("seed=1.5", "TrainConfig.seed: expected an integer"),
        ("grad_checkpointing=maybe", "TrainConfig.grad_checkpointing: expected true or false"),
        ('world_weights={"doom": "x"}', "TrainConfig.world_weights.doom"),
    ],
)
def test_set_values_of_the_wrong_kind_are_named(item, message):
    with pytest.raises(AstraError, match=message):
        get_preset("astra-tiny").with_updates(parse_overrides([item]))


@pytest.mark.parametrize(
    "item, message",
    [
        ("sampling.guidance=2", "unknown setting.*guidance;"),
        ("sampling.history_noise=1.5", "history_noise must lie in"),
        ("sampling.guidance_scale=abc", "wrong type"),
        ("sampling.guidance_interval=5", "wrong type"),
        ("sampling.guide_anchor=yes", "guide_anchor must be true or false, got 'yes'"),
    ],
)
def test_sampling_settings_are_checked_before_training(item, message):
    config = get_preset("astra-small").with_updates(parse_overrides(["sampling.num_steps=6"]))
    config.validate()
    assert config.sampling["num_steps"] == 6 and config.sampling["guidance_scale"] == 2.0  # merged, not replaced
    with pytest.raises(AstraError, match=message):
        config.with_updates(parse_overrides([item])).validate()


def test_config_files_must_hold_objects(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    args = argparse.Namespace(preset="astra-tiny", config=listed, overrides=[])
    with pytest.raises(AstraError, match="expected a JSON object of TrainConfig settings"):
        resolve_config(args)
    args.config = tmp_path / "missing.json"
    with pytest.raises(AstraError, match="cannot read --config"):
        resolve_config(args)
