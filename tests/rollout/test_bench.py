import argparse

import pytest
import torch

from astra.cli import main
from astra.model.config import PRESETS
from astra.rollout.bench import add_arguments, build_session


def test_bench_prints_the_table(capsys):
    code = main(["bench", "--random", "astra-tiny", "--chunks", "2", "--history", "1", "3", "--threads", "1",
                 "--long-frames", "24", "--compare-recompute", "--guidance", "2.0"])
    out = capsys.readouterr().out
    assert code == 0
    for metric in ("sustained frames/s", "long/short history ratio", "key-press-to-frame latency",
                   "authors' full recompute", "peak memory", "KV cache"):
        assert metric in out, metric


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--random", "nope"], "--random: unknown model preset 'nope'; known presets:"),
        (["--device", "foo"], "--device 'foo' is not a torch device"),
        (["--threads", "-2"], "--threads must be >= 1, got -2"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),  # was silently 4 steps
        (["--steps", "2", "0"], "--steps must be >= 1, got 0"),
        (["--chunks", "0"], "--chunks must be >= 1, got 0"),  # was a table of nan
        (["--history", "5", "1"], "--history SHORT LONG must be 0 <= SHORT <= LONG chunks, got 5 1"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, arguments, message):
    code = main(["bench", "--random", "astra-tiny", "--device", "cpu", "--history", "1", "2", *arguments])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert error.startswith("astra bench: error: ") and message in error


def test_cuda_without_cuda_is_one_clear_line(capsys, monkeypatch):
    """--device cuda on a machine without CUDA was an AssertionError deep inside torch."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--random", "astra-tiny", "--device", "cuda"]) == 2
    assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err


def test_dtype_names(capsys):
    """--dtype bf16 was an AttributeError (getattr(torch, 'bf16')): the short names are accepted, others refused."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--random", "astra-tiny", "--device", "cpu", "--dtype", "bf16"])
    session, _ = build_session(args, 1)
    assert next(session.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--compare-recompute"], ["--long-frames", "8"]])
def test_cache_measurements_refuse_a_model_without_a_cache(capsys, monkeypatch, option):
    """A bidirectional model keeps no KV cache: these options were an AttributeError on `session.cache` (None)
    after the whole timing run."""
    monkeypatch.setitem(PRESETS, "tiny-bidirectional", PRESETS["astra-tiny"].replace(attention="bidirectional"))
    code = main(["bench", "--random", "tiny-bidirectional", "--device", "cpu", "--chunks", "1", "--history", "0", "0",
                 *option])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error
    assert f"{option[0]} need a streaming model (one with a KV cache); this one (attention='bidirectional'" in error
