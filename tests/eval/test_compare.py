import json

import pytest

from astra.cli import main
from astra.errors import AstraError
from astra.eval.compare import compare, compare_table, load_results, setup_differences


def _world(name, psnr, copy, hits, n, rollout=12.0, saturated=1, blank=0, ssim=None, still=None):
    world = {
        "world": name, "cases": 4,
        "next_chunk": {"psnr": psnr, "psnr_copy_last": copy},
        "action_following": {"score": hits / n, "hits": hits, "n": n},
        "long_rollout": {"psnr_at": {"32": 15.0, "256": rollout},
                         "collapse": {"cases_blank": blank, "cases_saturated": saturated}},
    }  # fmt: skip
    if ssim is not None:  # results since session 26
        world["long_rollout"]["ssim_at"] = {"32": 0.5, "256": ssim}
    if still is not None:  # results since session 36: (model, start held) at frames 16 and 64
        world["hold_still"] = {"psnr_at": {"16": 22.0, "64": still[0]},
                               "psnr_at_start_held": {"16": 30.0, "64": still[1]}}
    return world


def _results(worlds, split="heldout", seed=0, sampler="4 Euler steps"):
    config = {"split": split, "seed": seed, "cases": 4, "context_frames": 9, "rollout_frames": 256}
    return {"checkpoint": "x", "sampler": sampler, "config": config, "worlds": worlds}


def _write(folder, results):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return str(folder)


def test_table_rows_deltas_and_pooled_over_common_worlds():
    runs = {
        "shipped": _results([_world("doom", 20.0, 21.0, 6, 8), _world("camera", 21.0, 28.0, 7, 8)]),
        "candidate": _results([_world("doom", 20.5, 21.0, 4, 8, rollout=13.25, saturated=3, blank=2, ssim=0.125,
                                      still=(19.5, 21.25))]),
    }
    lines = compare_table(runs).splitlines()
    row = next(line for line in lines if line.startswith("| doom | candidate"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    expected = ["doom", "candidate", "20.50", "-0.50", "+0.50", "0.50 (4/8)", "-0.25", "13.25 / 0.125 (256)",
                "2 / - / 3 of 4", "19.50 / 21.25 (64)"]
    assert cells == expected
    shipped = next(line for line in lines if line.startswith("| doom | shipped"))
    assert shipped.endswith("| 12.00 / - (256) | 0 / - / 1 of 4 | - |")  # no SSIM, no hold still in older results
    assert any(line.startswith("| camera | candidate | not evaluated") for line in lines)
    pooled = [line for line in lines if line.startswith("| pooled")]
    # camera is missing from the candidate, so the pooled rows cover doom only
    assert len(pooled) == 2 and all(line.startswith("| pooled (doom) |") for line in pooled)
    assert "| 0.75 (6/8) |" in pooled[0] and "+0.50" in pooled[1]


def test_setup_differences_name_the_setting_and_the_runs():
    same = {"a": _results([]), "b": _results([])}
    assert setup_differences(same) == []
    differ = {"a": _results([], seed=0), "b": _results([], split="train", seed=5, sampler="8 Euler steps")}
    notes = setup_differences(differ)
    assert [note.split()[0] for note in notes] == ["split", "seed", "sampler"]
    assert "a 0; b 5" in notes[1]
    # recorded settings win over the description: same settings, other wording, no warning
    a, b = _results([], sampler="4 steps"), _results([], sampler="4 Euler steps")
    a["sampling"] = b["sampling"] = {"num_steps": 4, "guidance_scale": 3.0}
    assert setup_differences({"a": a, "b": b}) == []
    b["sampling"] = {"num_steps": 8, "guidance_scale": 3.0}
    assert setup_differences({"a": a, "b": b})[0].startswith("sampling differs")
    # a setting added after a run was written counts at its default (what the sampler did before it existed)
    b["sampling"] = {"num_steps": 4, "guidance_scale": 3.0, "stats_anchor": 0.0, "stats_anchor_match": "channels"}
    assert setup_differences({"a": a, "b": b}) == []
    b["sampling"]["stats_anchor"] = 0.5
    assert "stats_anchor" in setup_differences({"a": a, "b": b})[0]
    b["sampling"] = {"num_steps": 4, "guidance_scale": 3.0, "stats_anchor_match": "covariance"}
    assert "stats_anchor_match" in setup_differences({"a": a, "b": b})[0]


def test_compare_cli_prints_warnings_and_table(tmp_path, capsys):
    first = _write(tmp_path / "shipped", _results([_world("doom", 20.0, 21.0, 6, 8)]))
    _write(tmp_path / "tuned", _results([_world("doom", 19.0, 21.0, 5, 8)], split="train"))
    assert main(["eval", "--compare", first, str(tmp_path / "tuned" / "results.json")]) == 0
    printed = capsys.readouterr().out
    assert "warning: split differs: shipped heldout; tuned train" in printed
    assert "| doom | tuned | 19.00 | -2.00 | -1.00 | 0.62 (5/8) | -0.12 |" in printed


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(AstraError, match="at least two"):
        compare([str(tmp_path)])
    with pytest.raises(AstraError, match="no such file"):
        load_results(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    with pytest.raises(AstraError, match="not valid JSON"):
        load_results(tmp_path / "broken")
    _write(tmp_path / "other", {"worlds": [{"world": "doom"}], "config": {}})
    with pytest.raises(AstraError, match=r"worlds\[0\] lacks next_chunk"):
        load_results(tmp_path / "other")
    assert main(["eval", "--compare", str(tmp_path / "missing"), str(tmp_path / "other")]) != 0
    # values of the wrong kind (a hand-edited file) name the file instead of failing amid the table
    good = _results([_world("doom", 20.0, 18.0, 6, 8)])
    for label, edit in (("config", lambda r: r.update(config=5)),
                        ("sampling", lambda r: r.update(sampling=None)),
                        ("world", lambda r: r["worlds"].append(None)),
                        ("psnr", lambda r: r["worlds"][0]["next_chunk"].update(psnr="high"))):  # fmt: skip
        bad = json.loads(json.dumps(good))
        edit(bad)
        folder = _write(tmp_path / f"bad-{label}", bad)
        with pytest.raises(AstraError, match=f"bad-{label}/results.json: "):
            load_results(folder)
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "results.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(AstraError, match="not valid JSON"):
        load_results(tmp_path / "binary")


def test_a_run_from_before_the_pooled_psnr_is_compared_on_per_frame_means():
    new = _world("doom", 19.0, 17.0, 6, 8)
    new["next_chunk"].update(psnr_pooling="mse", psnr_frame_mean=20.5, psnr_copy_last_frame_mean=21.0)
    old = _world("doom", 20.0, 21.0, 6, 8)  # its "psnr" is a mean of per-frame PSNRs
    runs = {"old": _results([old]), "new": _results([new])}
    row = next(line for line in compare_table(runs).splitlines() if line.startswith("| doom | new"))
    assert [cell.strip() for cell in row.strip("|").split("|")][2:5] == ["20.50", "-0.50", "+0.50"]
    assert any("predate the pooled PSNR" in note for note in setup_differences(runs))
    both_new = {"a": _results([new]), "b": _results([json.loads(json.dumps(new))])}
    row = next(line for line in compare_table(both_new).splitlines() if line.startswith("| doom | b"))
    assert [cell.strip() for cell in row.strip("|").split("|")][2:4] == ["19.00", "+2.00"]
    assert setup_differences(both_new) == []


def test_a_run_from_before_the_pooled_rollout_psnr_is_compared_on_per_frame_means():
    new = _world("doom", 19.0, 17.0, 6, 8, rollout=11.0)
    new["long_rollout"].update(psnr_pooling="mse", psnr_frame_mean_at={"32": 16.0, "256": 12.5})
    old = _world("doom", 20.0, 21.0, 6, 8, rollout=12.0)  # its "psnr_at" holds means of per-frame PSNRs
    runs = {"old": _results([old]), "new": _results([new])}
    row = next(line for line in compare_table(runs).splitlines() if line.startswith("| doom | new"))
    assert "| 12.50 / - (256) |" in row
    assert any(note.startswith("rollout PSNR: some runs predate") for note in setup_differences(runs))
    both_new = {"a": _results([new]), "b": _results([json.loads(json.dumps(new))])}
    row = next(line for line in compare_table(both_new).splitlines() if line.startswith("| doom | b"))
    assert "| 11.00 / - (256) |" in row
    assert not any(note.startswith("rollout PSNR") for note in setup_differences(both_new))
