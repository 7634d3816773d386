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


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"save_every": 0}, "save_every must be >= 1, got 0"),
        ({"log_every": 0}, "log_every must be >= 1, got 0"),
        ({"val_every": -1}, "val_every must be >= 0.*got -1"),
        ({"keep_checkpoints": -1}, "keep_checkpoints must be >= 0.*got -1"),
        ({"grad_clip": 0.0}, "grad_clip must be > 0, got 0.0"),
        ({"grad_clip": -1.0}, "grad_clip must be > 0, got -1.0"),
        ({"min_lr_ratio": -0.1}, r"min_lr_ratio must lie in \[0, 1\], got -0.1"),
        ({"min_lr_ratio": 1.5}, r"min_lr_ratio must lie in \[0, 1\], got 1.5"),
        ({"betas": (1.5, 0.9)}, r"betas must both lie in \[0, 1\), got \(1.5, 0.9\)"),
        ({"target_frames": -1}, "target_frames must be >= 0.*got -1"),
        ({"latent_size": (0, 4)}, r"latent_size must be two sizes >= 1.*got \(0, 4\)"),
        ({"seed": -1}, r"seed must lie in \[0, \d+\], got -1"),
        ({"seed": 2**31 - 1}, r"seed must lie in \[0, \d+\], got 2147483647"),
        ({"noisy_memory_range": (1.0, 1.0)}, r"noisy_memory_range .*lo < 1, got \(1.0, 1.0\)"),
        ({"batch_size": 0}, "batch_size must be >= 1.*got 0"),
    ],
)
def test_settings_that_would_fail_late_or_train_wrongly_are_named_up_front(changes, message):
    with pytest.raises(AstraError, match=message):
        get_preset("astra-tiny").replace(**changes).validate()


def test_the_highest_valid_seed_seeds_every_generator_training_and_validation_use():
    from astra.train.batches import MAX_GENERATOR_SEED, SEED_SPREAD, step_generator
    from astra.train.validation import HELDOUT_SEED_OFFSET

    config, highest = get_preset("astra-tiny"), MAX_GENERATOR_SEED - HELDOUT_SEED_OFFSET
    config.replace(seed=highest).validate()
    with pytest.raises(AstraError, match="seed"):
        config.replace(seed=highest + 1).validate()
    last = SEED_SPREAD - 1  # the largest rank and step the generator keeps apart
    step_generator(highest + HELDOUT_SEED_OFFSET, last, last, stream=7)  # the held-out batches' seed: no overflow
    with pytest.raises((RuntimeError, ValueError), match="Overflow"):  # one more would not fit torch's 64-bit seeds
        step_generator(highest + HELDOUT_SEED_OFFSET + 1, last, last, stream=7)
    assert get_preset("wan2.1-t2v-1.3b").noisy_memory_range[1] == 1.0  # hi may be 1 (the paper's [0.63, 1])
