import argparse
import importlib

import pytest
import torch

from astra.cli import COMMANDS
from astra.errors import AstraError
from astra.rollout.options import add_sampling_arguments, sampling_settings, torch_device


def _parse(argv, command=None):
    parser = argparse.ArgumentParser()
    if command is None:
        add_sampling_arguments(parser)
    else:
        importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("command", ["generate", "play", "eval"])
def test_every_generating_command_takes_the_same_sampler_flags(command):
    argv = ["--steps", "8", "--shift", "3", "--guidance", "2", "--history-noise", "0.1", "--guidance-interval", "0.2", "0.9",
            "--guidance-outside", "0", "--noise-scale", "0.5", "--stats-anchor", "0.6", "--stats-anchor-match", "covariance",
            "--guide-anchor"]  # fmt: skip
    settings = sampling_settings(_parse(argv, command))
    assert settings == {"steps": 8, "shift": 3.0, "guidance_scale": 2.0, "history_noise": 0.1, "guidance_interval": [0.2, 0.9],
                        "guidance_outside": 0.0, "noise_scale": 0.5, "stats_anchor": 0.6,
                        "stats_anchor_match": "covariance", "guide_anchor": True}  # fmt: skip
    assert sampling_settings(_parse(["--guidance-scale", "4"], command))["guidance_scale"] == 4.0
    assert sampling_settings(_parse(["--no-guide-anchor"], command))["guide_anchor"] is False
    with pytest.raises(SystemExit):  # argparse names the choices
        _parse(["--stats-anchor-match", "hue"], command)


def test_unset_flags_leave_the_checkpoint_settings_and_bad_steps_fail_early():
    assert set(sampling_settings(_parse([])).values()) == {None}
    with pytest.raises(AstraError, match="--steps must be >= 1, got 0"):
        sampling_settings(_parse(["--steps", "0"]))


def test_devices_are_checked_up_front(monkeypatch):
    """An unknown name was a torch RuntimeError traceback, cuda without CUDA an AssertionError inside torch."""
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(AstraError, match="--device 'foo' is not a torch device; astra runs on cpu, cuda"):
        torch_device("foo")
    with pytest.raises(AstraError, match="--device 'meta': astra runs on"):
        torch_device("meta")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AstraError, match="--device cuda:0: CUDA is not available on this machine"):
        torch_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(AstraError, match="--device cuda:1: this machine has 1 CUDA device"):
        torch_device("cuda:1")
