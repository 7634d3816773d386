import json

import numpy as np
import pytest
from PIL import Image

from astra.cli import main
from astra.eval.metrics import CollapseConfig
from astra.eval.presets import PresetStressConfig, score_rollout, stress_presets
from astra.rollout.session import load_rollout

ROLLOUT_FRAMES = 16  # two chunks of the tiny model


def test_score_rollout_measures_late_white_blank_and_frozen_frames():
    config = PresetStressConfig(rollout_frames=40, late_from=20, collapse=CollapseConfig(frozen_window=8))
    rng = np.random.default_rng(0)
    video = rng.integers(0, 200, size=(41, 8, 8, 3), dtype=np.uint8)  # start frame + 40 moving, never white
    video[31:, :4] = 255  # half of every frame from generated frame 31 on (video index = frame number) burns white
    scores = score_rollout(video, config)
    assert scores["late_saturated"] == pytest.approx(0.5 * 10 / 20)  # frames 21-40: 10 of them half white
    assert scores["start_saturated"] == 0.0
    assert scores["max_saturated"] == pytest.approx(0.5)
    assert scores["blank"] is None and scores["frozen"] is None
    video[11:] = 128  # from generated frame 11 on: one flat grey frame, held
    scores = score_rollout(video, config)
    assert scores["blank"] == 11 and scores["frozen"] == 12  # frame 11 still moved (from 10); 12-19 do not
    assert scores["late_saturated"] == 0.0


def test_preset_stress_test_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "presets"
    flags = ["--presets", "--worlds", "drive", "--cases", "2", "--rollout-frames", str(ROLLOUT_FRAMES)]
    flags += ["--out", str(out)]
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), *flags]) == 0
    assert "worst saturated fraction" in capsys.readouterr().out
    results = json.loads((out / "presets.json").read_text())
    (world,) = results["worlds"]
    assert world["modality"] == "vehicle7" and set(world["presets"]) == {"straight", "left_turn", "right_turn"}
    for scores in world["presets"].values():
        assert len(scores["late_saturated"]) == 2 and all(0.0 <= v <= 1.0 for v in scores["late_saturated"])
    report = (out / "presets.md").read_text()
    assert "| left_turn |" in report and "| (the start frames) |" in report and world["contact_sheet"] in report
    with Image.open(out / world["contact_sheet"]) as sheet:
        assert sheet.height > 3 * 96  # one row per preset

    # same seed, same numbers (the model injected in-process this time)
    config = PresetStressConfig(worlds=("drive",), starts=2, rollout_frames=ROLLOUT_FRAMES, late_from=8)
    again = stress_presets(config, tmp_path / "again", loaded=load_rollout(tiny_checkpoint))["worlds"][0]
    assert again["presets"] == world["presets"]


def test_bad_preset_options_fail_with_one_clear_line(tiny_checkpoint, tmp_path, capsys):
    code = main(["eval", "--presets", "--checkpoint", str(tiny_checkpoint), "--cases", "0", "--out", str(tmp_path)])
    assert code == 2
    error = capsys.readouterr().err
    assert "astra eval: error:" in error and "--cases" in error and "Traceback" not in error
