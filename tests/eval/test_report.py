import json
import re

import numpy as np
import pytest
from PIL import Image

from astra.cli import main
from astra.errors import AstraError
from astra.eval import report as report_module
from astra.eval.cases import ReplayMismatch
from astra.eval.plots import SheetStyle
from astra.eval.report import EvalConfig, _collapse_count, evaluate, summarise_world
from astra.rollout.session import RolloutConfig, load_rollout

ROLLOUT_FRAMES = 16  # two chunks of the tiny model
HOLD_STILL_FRAMES = 16


def test_astra_eval_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    flags = ["--worlds", "camera", "--cases", "1", "--context-frames", "5", "--seed", "4", "--out", str(out),
             "--hold-still-frames", str(HOLD_STILL_FRAMES)]
    code = main(["eval", "--checkpoint", str(tiny_checkpoint), "--rollout-frames", str(ROLLOUT_FRAMES), *flags])
    assert code == 0
    assert re.search(r"camera: PSNR .* hold still t=16 [0-9.]+ dB \(start held [0-9.]+\)", capsys.readouterr().out)
    results = json.loads((out / "results.json").read_text())
    (world,) = results["worlds"]
    assert world["world"] == "camera" and world["seeds"] == [4]
    assert world["next_chunk"]["frames"] == 8
    assert len(world["long_rollout"]["psnr_per_frame"]) == ROLLOUT_FRAMES
    # the copy-last baseline is a real measurement: finite, and the camera of seed 4 moves, so below the cap
    assert 5.0 < world["next_chunk"]["psnr_copy_last"] < 60.0
    assert 0.0 < world["next_chunk"]["ssim"] < 1.0
    # the VAE references are measured too (the tiny test VAE is untrained: far below a perfect round trip)
    assert 0.0 < world["next_chunk"]["psnr_vae_round_trip"] < 40.0
    assert 0.0 < world["next_chunk"]["psnr_copy_last_via_vae"] < 40.0
    assert world["action_following"]["n"] + 2 * world["action_following"]["skipped_cases"] == 2
    ceiling = world["action_following"]["vae_round_trip"]  # the same trials for the true futures through the VAE
    assert ceiling["n"] == world["action_following"]["n"] and 0 <= ceiling["hits"] <= ceiling["n"]
    assert world["bars"]["no_collapse"] == "N/A"  # 16 frames cannot show 256 collapse-free frames
    # the collapse flags' reference, the truth through the VAE, is counted per flag like the model's
    reference = world["long_rollout"]["collapse"]["vae_round_trip"]
    assert set(reference) == {"cases_blank", "cases_frozen", "cases_saturated"}
    assert all(count in (0, 1) for count in reference.values())
    (case,) = world["long_rollout"]["collapse"]["per_case"]  # and per case, to see where both fail
    assert {flag: case["truth_via_vae"][flag] is not None for flag in ("blank", "frozen", "saturated")} == {
        flag: bool(reference[f"cases_{flag}"]) for flag in ("blank", "frozen", "saturated")
    }
    report = (out / "report.md").read_text()
    assert "| camera |" in report and "copy-last" in report and "VAE round trip (ceiling)" in report
    assert "SSIM at frame t" in report and "Detail kept at frame t" in report
    assert "truth via VAE: blank / frozen / saturated" in report
    assert "blank cases (whole rollout)" in report  # the bar counts only the first 256 frames; these all of them
    assert len(world["long_rollout"]["model_stats"]["detail"]) == ROLLOUT_FRAMES
    # nothing pressed: scored against the simulator's frames; a still camera renders exactly the start frame again
    held = world["hold_still"]
    assert held["frames"] == HOLD_STILL_FRAMES and set(held["psnr_at"]) == set(held["psnr_at_start_held"]) == {"16"}
    assert 5.0 < held["psnr_at"]["16"] < 60.0 and held["psnr_at_start_held"]["16"] == 60.0  # the cap: exact
    assert 0.0 < held["psnr_vae_round_trip"] < 40.0
    assert "## Hold still" in report and "truth through the VAE" in report
    assert 0.0 < world["next_chunk"]["detail_kept_vae_round_trip"] < 10.0
    for name in world["plots"].values():
        assert name in report
        with Image.open(out / name) as image:
            assert image.width > 100 and image.height > 100

    # same seed, same numbers (the model injected in-process this time)
    loaded = load_rollout(tiny_checkpoint)
    height, style = loaded[0].config.resolution[0], SheetStyle()
    tile = -(-style.min_tile // height) * height
    with Image.open(out / world["plots"]["contact_sheet"]) as sheet:  # rows: GT, GT through the VAE, model
        assert sheet.height == style.header_height + 3 * (tile + style.gap)
    # the report opens with the overview: per world the first case's truth above the model, at the overview frames
    # that the rollout reaches (1, 4 and 16 of 16)
    assert f"]({results['overview']})" in report
    with Image.open(out / results["overview"]) as overview:
        assert overview.height == style.header_height + 2 * (tile + style.gap)
        assert overview.width == style.label_width + 3 * (tile + style.gap)
        truth_tile = np.asarray(overview.convert("RGB"))[style.header_height : style.header_height + tile,
                                                         style.label_width : style.label_width + tile]  # fmt: skip
    assert truth_tile.std() > 0  # a frame, not the empty background
    config = EvalConfig(worlds=("camera",), cases=1, context_frames=5, rollout_frames=ROLLOUT_FRAMES, seed=4,
                        report_frames=(8, ROLLOUT_FRAMES), hold_still_frames=HOLD_STILL_FRAMES)
    again = evaluate(config, tmp_path / "again", loaded=loaded)["worlds"][0]
    assert again["next_chunk"] == world["next_chunk"]
    assert again["hold_still"] == world["hold_still"]
    long = again["long_rollout"]  # the report frames within 16 frames: SSIM and detail kept there
    assert set(long["ssim_at"]) == set(long["detail_kept_at"]) == {"8", "16"}
    assert all(-1.0 < v < 1.0 for v in long["ssim_at"].values()) and min(long["detail_kept_at"].values()) > 0
    np.testing.assert_array_equal(again["long_rollout"]["psnr_per_frame"], world["long_rollout"]["psnr_per_frame"])

    # `astra eval --compare` reads what `astra eval` writes: same cases, so no warning, and a zero delta
    capsys.readouterr()
    assert main(["eval", "--compare", str(out), str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "warning" not in printed
    assert re.search(r"\| camera \| again \| [0-9.]+ \| [-+][0-9.]+ \| \+0\.00 \|", printed)


def test_the_report_counts_collapsed_cases_the_truth_through_the_vae_shares():
    none = {"blank": None, "frozen": None, "saturated": None}
    per_case = [
        {"seed": 0, "blank": 12, "frozen": None, "saturated": None, "truth_via_vae": {**none, "blank": 30}},
        {"seed": 1, "blank": 40, "frozen": None, "saturated": 9, "truth_via_vae": {**none, "frozen": 20}},
        {"seed": 2, **none, "truth_via_vae": {**none, "blank": 5}},
    ]
    collapse = {"cases_blank": 2, "cases_frozen": 0, "cases_saturated": 1, "per_case": per_case}
    assert _collapse_count(collapse, "blank") == "2 (1 also via VAE)"
    assert _collapse_count(collapse, "saturated") == "1 (0 also via VAE)"
    assert _collapse_count(collapse, "frozen") == "0"
    older = {"cases_blank": 2, "per_case": [{k: v for k, v in case.items() if k != "truth_via_vae"} for case in per_case]}
    assert _collapse_count(older, "blank") == "2"  # results written before the per-case reference


@pytest.mark.parametrize(
    "flags, message",
    [(["--worlds", "moon"], "unknown world"), (["--context-frames", "4"], "4k \\+ 1"), (["--cases", "0"], "--cases"),
     (["--device", "foo"], "--device 'foo' is not a torch device"),  # was a torch RuntimeError traceback
     (["--seed", "-1"], "argument --seed: -1 is outside 0"),
     (["--hold-still-frames", "-1"], "--hold-still-frames must be >= 0")],
)
def test_bad_options_fail_with_one_clear_line(tiny_checkpoint, tmp_path, capsys, flags, message):
    code = main(["eval", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), *flags])
    assert code == 2
    error = capsys.readouterr().err
    assert "astra eval: error:" in error and "Traceback" not in error
    assert re.search(message, error)


def test_the_vae_round_trip_of_an_exact_vae_is_the_truth():
    """The ceiling column's helper: with a VAE that encodes and decodes exactly, the round trip returns the frames."""
    import torch

    from astra.eval.report import vae_round_trip

    class ExactVae(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def encode(self, video):
            return video * self.scale

        def decode(self, latents, start=None):
            return latents / self.scale

    class Session:
        vae, device, vae_dtype = ExactVae(), torch.device("cpu"), torch.float32

    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(vae_round_trip(Session(), frames), frames)


def _case_of(frames: int, collapse: dict) -> dict:
    """A case's numbers for summarise_world: a flawless rollout of `frames` generated frames but for `collapse`."""
    stats = {name: np.ones(frames) for name in ("mean", "std", "detail", "motion", "saturated")}
    return {"seed": 0, "chunk_mse": 1e-3, "chunk_mse_copy": 1e-2, "chunk_mse_vae": 10**-3.5, "chunk_mse_copy_vae": 1e-2,
            "chunk_still_frames": 0,
            "chunk_psnr": 30.0, "chunk_psnr_copy": 20.0, "chunk_psnr_vae": 35.0, "chunk_detail_vae": 1.0,
            "chunk_psnr_copy_vae": 20.0, "chunk_ssim": 0.9, "chunk_ssim_copy": 0.8, "action_scored": True,
            "action_hits": 2, "action_trials": 2, "action_hits_vae": 1, "mse_curve": np.full(frames, 1e-3),
            "mse_curve_copy": np.full(frames, 1e-2), "ssim_curve": np.ones(frames), "ssim_curve_copy": np.ones(frames),
            "model_stats": stats, "truth_stats": stats, "collapse": {"saturated": None, **collapse},
            "collapse_vae": {"blank": None, "frozen": None, "saturated": None}}  # fmt: skip


@pytest.mark.parametrize(
    "collapse, bar",
    [
        ({"blank": 400, "frozen": None}, "PASS"),  # after the bar's 256 frames: it failed the bar
        ({"blank": 257, "frozen": None}, "PASS"),
        ({"blank": 256, "frozen": None}, "FAIL"),  # index 256 = the 256th generated frame (index 0 is the start)
        ({"blank": None, "frozen": 241}, "FAIL"),  # a 16-frame still window over frames 241..256
        ({"blank": None, "frozen": 242}, "PASS"),  # ends at frame 257: a 256-frame rollout could not show it
    ],
)
def test_the_collapse_bar_counts_only_its_first_frames(collapse, bar):
    config = EvalConfig(rollout_frames=512)
    assert config.bars.collapse_free_frames == 256 and config.collapse.frozen_window == 16
    summary = summarise_world("camera", [_case_of(512, collapse)], [], config, chunk=4)
    assert summary["bars"]["no_collapse"] == bar
    counts = summary["long_rollout"]["collapse"]  # the per-case counts still cover the whole rollout
    assert (counts["cases_blank"], counts["cases_frozen"]) == (collapse["blank"] is not None, collapse["frozen"] is not None)


def test_next_chunk_psnr_pools_squared_errors_so_still_frames_do_not_hand_copy_last_the_cap():
    """Two cases: copy-last is exact on the first (a still future: 60 dB per frame, the cap) and poor on the second.
    The mean of per-frame PSNRs gives copy-last 40 dB and the model (30 dB on both) a -10 dB 'gain'; pooled, copy-last
    scores what its squared error says (mean 5e-3: 23.0 dB) and the model passes by 7 dB."""
    still, moving = _case_of(8, {"blank": None, "frozen": None}), _case_of(8, {"blank": None, "frozen": None})
    still.update(chunk_mse_copy=0.0, chunk_psnr_copy=60.0, chunk_still_frames=4)
    moving.update(chunk_psnr_copy=20.0)
    summary = summarise_world("camera", [still, moving], [], EvalConfig(rollout_frames=8), chunk=4)
    chunk = summary["next_chunk"]
    assert chunk["psnr_copy_last_frame_mean"] == pytest.approx(40.0) and chunk["psnr_frame_mean"] == pytest.approx(30.0)
    assert chunk["psnr"] == pytest.approx(30.0) and chunk["psnr_copy_last"] == pytest.approx(10 * np.log10(1 / 5e-3))
    assert chunk["psnr_gain_db"] == pytest.approx(30.0 - 23.0103, abs=1e-3) and chunk["still_frames"] == 4
    assert summary["bars"]["next_chunk_psnr"] == "PASS" and chunk["bar_frame_mean"] == "FAIL"
    assert report_module._psnr_bar(summary) == "PASS (mean of per-frame PSNRs: FAIL)"


def test_a_run_that_fails_midway_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("old")
    (out / "camera_psnr.png").write_bytes(b"old")

    def evaluate_world(name, loaded, config, folder, device):
        if name == "drive":
            raise AstraError("the simulator died")
        (folder / f"{name}_psnr.png").write_bytes(b"new")
        return {}

    monkeypatch.setattr(report_module, "evaluate_world", evaluate_world)
    monkeypatch.setattr(report_module, "loaded_model", lambda *args: ("x", (None, None, {}, RolloutConfig())))
    with pytest.raises(AstraError, match="simulator died"):
        evaluate(EvalConfig(worlds=("camera", "drive")), out)
    assert (out / "report.md").read_text() == "old" and (out / "camera_psnr.png").read_bytes() == b"old"
    assert [path.name for path in tmp_path.iterdir()] == ["report"]  # nor is a staging folder left


def test_a_seed_that_does_not_replay_is_replaced_and_reported(tiny_checkpoint, tmp_path, monkeypatch):
    real_build_case = report_module.build_case

    def build_case(world, seed, *args):
        if seed == 4:
            raise ReplayMismatch(f"camera seed {seed}: replaying the recorded controls changed true frame 3")
        return real_build_case(world, seed, *args)

    monkeypatch.setattr(report_module, "build_case", build_case)
    config = EvalConfig(worlds=("camera",), cases=1, context_frames=5, rollout_frames=8, seed=4, report_frames=(8,))
    with pytest.warns(UserWarning, match="seed 4"):
        results = evaluate(config, tmp_path / "out", loaded=load_rollout(tiny_checkpoint))
    (world,) = results["worlds"]
    assert world["seeds"] == [5] and world["seeds_skipped_replay_mismatch"] == [4]
    assert "did not reproduce the frames: {'camera': [4]}" in (tmp_path / "out" / "report.md").read_text()


def test_rollout_psnr_pools_squared_errors_over_the_cases():
    """Copy-last exact on one case's frames (60 dB each, the cap) and 1e-2 on the other's: the pooled PSNR is that
    of the mean squared error (5e-3: 23.0 dB), the per-frame mean beside it is 40 dB."""
    config = EvalConfig(rollout_frames=32)
    still, moving = _case_of(32, {"blank": None, "frozen": None}), _case_of(32, {"blank": None, "frozen": None})
    still.update(mse_curve=np.full(32, 4e-3), mse_curve_copy=np.zeros(32))
    summary = summarise_world("camera", [still, moving], [], config, chunk=4)
    long = summary["long_rollout"]
    assert long["psnr_pooling"] == "mse"
    assert long["psnr_at"]["32"] == pytest.approx(10 * np.log10(1 / 2.5e-3))  # model: mean of 4e-3 and 1e-3
    assert long["psnr_copy_last_at"]["32"] == pytest.approx(10 * np.log10(1 / 5e-3))
    assert long["psnr_frame_mean_at"]["32"] == pytest.approx((10 * np.log10(1 / 4e-3) + 30.0) / 2)
    assert len(long["psnr_per_frame"]) == 32


def test_hold_still_psnr_pools_squared_errors_over_the_cases_and_is_absent_when_not_measured():
    """One case matches the simulator's still frames exactly, the other is 4e-3 off them: pooled 2e-3 (27.0 dB);
    results without the still frames (before session 36, or --hold-still-frames 0) have no hold_still entry."""
    config = EvalConfig(rollout_frames=8, hold_still_frames=16)
    kept, drifted = _case_of(8, {"blank": None, "frozen": None}), _case_of(8, {"blank": None, "frozen": None})
    kept.update(hold_still_mse_curve=np.zeros(16), hold_still_mse_curve_start=np.full(16, 1e-2),
                hold_still_mse_vae=1e-3)
    drifted.update(hold_still_mse_curve=np.full(16, 4e-3), hold_still_mse_curve_start=np.zeros(16),
                   hold_still_mse_vae=1e-3)
    held = summarise_world("camera", [kept, drifted], [], config, chunk=4)["hold_still"]
    assert held["frames"] == 16 and set(held["psnr_at"]) == {"16"}
    assert held["psnr_at"]["16"] == pytest.approx(10 * np.log10(1 / 2e-3))
    assert held["psnr_at_start_held"]["16"] == pytest.approx(10 * np.log10(1 / 5e-3))
    assert held["psnr_vae_round_trip"] == pytest.approx(30.0)
    plain = _case_of(8, {"blank": None, "frozen": None})
    plain.update(hold_still_mse_curve=np.zeros(16), hold_still_mse_vae=1e-3)  # session 35: against the start frame
    assert "hold_still" not in summarise_world("camera", [plain], [], config, chunk=4)


def test_following_reports_the_ceiling_of_the_truth_through_the_vae_beside_the_models_score():
    cases = [_case_of(8, {"blank": None, "frozen": None}) for _ in range(3)]
    cases[0].update(action_hits_vae=2)
    summary = summarise_world("robot", cases, [], EvalConfig(rollout_frames=8), chunk=4)
    following = summary["action_following"]
    assert (following["hits"], following["n"], following["score"]) == (6, 6, 1.0)
    assert following["vae_round_trip"]["hits"] == 4 and following["vae_round_trip"]["score"] == pytest.approx(4 / 6)
    overall = report_module.summarise_overall([summary, summary])
    assert overall["action_following"]["vae_round_trip"]["score"] == pytest.approx(4 / 6)


def test_through_a_lossless_vae_the_true_futures_follow_their_actions_in_every_trial(tiny_checkpoint, tmp_path,
                                                                                     monkeypatch):
    """The following ceiling scores the true futures through the VAE: with a VAE that changed nothing, each future
    is nearer itself than the other (the camera of seed 4 moves, so its mirrored future differs)."""
    monkeypatch.setattr(report_module, "vae_round_trip", lambda session, frames: frames)
    config = EvalConfig(worlds=("camera",), cases=1, context_frames=5, rollout_frames=8, seed=4,
                        report_frames=(8,), hold_still_frames=0)  # fmt: skip
    (world,) = evaluate(config, tmp_path / "out", loaded=load_rollout(tiny_checkpoint))["worlds"]
    following = world["action_following"]
    assert following["n"] == 2 and following["vae_round_trip"]["hits"] == 2
