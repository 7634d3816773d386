"""Evaluate a model on held-out world episodes and write `report.md`, `results.json` and PNG plots.

Per world and case (see cases.py): the rollout session starts from the last context frame and generates
(1) the long rollout under the true action rows (its first chunk is the next-chunk prediction and the
"true" generation of the action-following test) and (2) one chunk under the alternative rows from the same
start and the same noise seed, so the two generations differ only by their actions, and (3) the hold-still
future: the rows the simulator reports while the player lets go, scored against the frames it renders meanwhile.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from astra.errors import AstraError, UnusualActionWarning
from astra.eval.cases import Case, ReplayMismatch, build_case, case_seeds
from astra.eval.metrics import (
    COLLAPSE_FLAGS,
    PSNR_CAP_DB,
    CollapseConfig,
    binomial_summary,
    capped_psnr,
    collapse_frames,
    detail_kept,
    follows_actions,
    frame_stats,
    futures_differ,
    mse_per_frame,
    pooled_psnr,
    psnr_of_mse,
    ssim_per_frame,
)
from astra.eval.plots import contact_sheet, line_plot, load_png, save_png, stack_vertically
from astra.files import staged_files
from astra.rollout.session import (
    MODALITY_OF_WORLD,
    RolloutConfig,
    RolloutSession,
    frames_to_video,
    load_rollout,
    video_to_frames,
)
from astra.worlds import EpisodeEnded
from astra.worlds.base import make_world

PASS, FAIL, NOT_MEASURED = "PASS", "FAIL", "N/A"
# the per-frame statistics averaged over cases, plotted and written to results.json (astra/eval/metrics.py)
OVERVIEW_FILE = "overview.png"  # each world's first case: truth above the model (the report's first picture)
PSNR_POOLING = "mse"  # PSNR of the pooled squared error (results before it: the mean of per-frame PSNRs)
STAT_CURVES = {"mean": "mean intensity", "std": "spatial std (per channel)",
               "detail": "detail (mean |neighbour difference|)", "motion": "mean |frame_t - frame_t-1|"}  # fmt: skip


@dataclass(frozen=True)
class Bars:
    """What a world must reach (the issue's acceptance bars)."""

    action_following: float = 0.80
    psnr_gain_db: float = 1.0  # one-chunk PSNR over copy-last-frame
    collapse_free_frames: int = 256


def check_worlds(worlds: tuple[str, ...]) -> None:
    """At least one world, each one `astra eval` knows."""
    unknown = sorted(set(worlds) - set(MODALITY_OF_WORLD))
    if unknown:
        raise AstraError(f"unknown world(s) {', '.join(unknown)}; known: {', '.join(MODALITY_OF_WORLD)}")
    if not worlds:
        raise AstraError("no worlds to evaluate")


@dataclass(frozen=True)
class EvalConfig:
    worlds: tuple[str, ...] = ("doom", "robot", "camera", "drive")
    cases: int = 20
    context_frames: int = 9  # 4k + 1 video frames under the policy before the model takes over
    rollout_frames: int = 256  # rounded up to whole chunks
    seed: int = 0  # case i uses held-out seed `seed + i` (later seeds replace episodes that end early)
    split: str = "heldout"  # "train" only to tune sampling settings; every reported number uses "heldout"
    min_future_mse: float = 5e-4  # two ground-truth futures closer than this (in [0,1]^2 units) are not scored
    report_frames: tuple[int, ...] = (32, 64, 128, 256)
    # frames generated per case with nothing pressed (the simulator's still control gives the rows and the truth);
    # rounded up to whole chunks, 0 = not measured
    hold_still_frames: int = 64
    hold_still_report_frames: tuple[int, ...] = (16, 32, 64)
    sheet_cases: int = 3
    sheet_frames: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    # the overview (every world's first case, truth above the model, in one picture) shows fewer frames
    overview_frames: tuple[int, ...] = (1, 4, 16, 32, 64, 128, 256)
    collapse: CollapseConfig = CollapseConfig()
    bars: Bars = Bars()

    def validate(self) -> None:
        check_worlds(self.worlds)
        if self.cases < 1:
            raise AstraError(f"--cases must be >= 1, got {self.cases}")
        if self.context_frames < 1 or (self.context_frames - 1) % 4:
            raise AstraError(f"--context-frames must be 4k + 1 (1, 5, 9, ...), got {self.context_frames}")
        if self.sheet_cases < 1:
            raise AstraError(f"sheet_cases must be >= 1, got {self.sheet_cases}")
        if self.rollout_frames < 1:
            raise AstraError(f"--rollout-frames must be >= 1, got {self.rollout_frames}")
        if self.hold_still_frames < 0:
            raise AstraError(f"--hold-still-frames must be >= 0, got {self.hold_still_frames}")
        if self.seed < 0:  # the worlds seed numpy with it: a negative one failed after the model had loaded
            raise AstraError(f"--seed must be >= 0, got {self.seed}")


# ------------------------------------------------------------------------------------------------ per case
def _generate(session: RolloutSession, start: np.ndarray, rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(start frame as the model sees it, generated frames [len(rows), H, W, 3]) chunk by chunk."""
    start_frame = session.start(start, seed=seed)
    step = session.frames_per_step
    chunks = [session.step(rows[offset : offset + step]) for offset in range(0, len(rows), step)]
    return start_frame, np.concatenate(chunks)


@torch.no_grad()
def vae_round_trip(session: RolloutSession, frames: np.ndarray) -> np.ndarray:
    """uint8 frames [1 + 4k, H, W, 3] (the start and what follows) encoded and decoded by the model's VAE: what a
    model that predicted the true latents exactly would show (the practical ceiling of its PSNR)."""
    video = frames_to_video(frames).to(session.device, session.vae_dtype)
    return video_to_frames(session.vae.decode(session.vae.encode(video), start=video[:, :, :1]))


def evaluate_case(case: Case, session: RolloutSession, config: EvalConfig) -> dict[str, Any]:
    """All per-case numbers (arrays stay numpy) plus the frames the contact sheet needs."""
    chunk = session.frames_per_step
    start = case.context_frames[-1]
    start_frame, generated = _generate(session, start, case.true_rows, case.seed)
    _, generated_alternative = _generate(session, start, case.alternative_rows, case.seed)
    # nothing pressed: a model whose view drifts or dissolves while the world stays put shows it here
    held_still = _generate(session, start, case.still_rows, case.seed)[1] if len(case.still_rows) else None
    copy_last = np.broadcast_to(start, case.true_frames.shape)

    truth_chunk, model_chunk, copy_chunk = case.true_frames[:chunk], generated[:chunk], copy_last[:chunk]
    # the two reference points inside the latent space: the truth through the VAE (what predicting the true latents
    # exactly would score) and the start frame as the model sees it, repeated (what a network that only copies scores)
    ceiling_chunk = vae_round_trip(session, np.concatenate([start[None], truth_chunk]))[1:]
    copy_seen_chunk = np.broadcast_to(start_frame, truth_chunk.shape)
    scored = futures_differ(truth_chunk, case.alternative_frames, config.min_future_mse)
    follows, follows_vae = [], []
    if scored:
        follows = follows_actions(model_chunk, generated_alternative, truth_chunk, case.alternative_frames)
        # the same test for the two true futures through the VAE: a model that predicted both futures' latents
        # exactly scores this, so it is the ceiling of following that this VAE allows
        alternative_vae = vae_round_trip(session, np.concatenate([start[None], case.alternative_frames]))[1:]
        follows_vae = follows_actions(ceiling_chunk, alternative_vae, truth_chunk, case.alternative_frames)
    generated_video = np.concatenate([start_frame[None], generated])  # frame 0 = the start, as each side sees it
    truth_video = np.concatenate([start[None], case.true_frames])
    # the collapse flags' reference: how often the truth through the VAE alone is flagged (a blurred wall can lose a
    # quarter of the contrast, a decoded sky can burn white, small motions can vanish)
    truth_via_vae = vae_round_trip(session, truth_video)
    level = config.collapse.saturated_level  # the stats' saturated fraction then matches the collapse flag's
    # per-frame squared errors, once each: their means for the world's pooled PSNR, the capped per-frame PSNR means
    # beside them for continuity
    errors = {name: mse_per_frame(chunk_frames, truth_chunk) for name, chunk_frames in
              (("", model_chunk), ("_copy", copy_chunk), ("_vae", ceiling_chunk), ("_copy_vae", copy_seen_chunk))}  # fmt: skip
    return {
        "seed": case.seed,
        **{f"chunk_mse{name}": float(mse.mean()) for name, mse in errors.items()},
        **{f"chunk_psnr{name}": float(capped_psnr(mse).mean()) for name, mse in errors.items()},
        "chunk_still_frames": int((errors["_copy"] == 0.0).sum()),
        "chunk_detail_vae": detail_kept(ceiling_chunk, truth_chunk),
        "chunk_ssim": float(ssim_per_frame(model_chunk, truth_chunk).mean()),
        "chunk_ssim_copy": float(ssim_per_frame(copy_chunk, truth_chunk).mean()),
        "action_scored": scored,
        "action_hits": int(sum(follows)),
        "action_trials": len(follows),
        "action_hits_vae": int(sum(follows_vae)),
        "mse_curve": mse_per_frame(generated, case.true_frames),
        "mse_curve_copy": mse_per_frame(copy_last, case.true_frames),
        "ssim_curve": ssim_per_frame(generated, case.true_frames),  # structure, which PSNR weighs little
        "ssim_curve_copy": ssim_per_frame(copy_last, case.true_frames),
        "model_stats": {name: values[1:] for name, values in frame_stats(generated_video, level).items()},
        "truth_stats": {name: values[1:] for name, values in frame_stats(truth_video, level).items()},
        "collapse": collapse_frames(generated_video, truth_video, config.collapse),
        "collapse_vae": collapse_frames(truth_via_vae, truth_video, config.collapse),
        **({} if held_still is None else {
            "hold_still_mse_curve": mse_per_frame(held_still, case.still_frames),
            "hold_still_mse_curve_start": mse_per_frame(np.broadcast_to(start, held_still.shape), case.still_frames),
            "hold_still_mse_vae": float(mse_per_frame(
                vae_round_trip(session, np.concatenate([start[None], case.still_frames]))[1:], case.still_frames
            ).mean()),
        }),
        "frames": {"truth": case.true_frames, "model": generated, "alternative_truth": case.alternative_frames,
                   "alternative_model": generated_alternative, "truth_via_vae": truth_via_vae[1:]},  # fmt: skip
    }


# ----------------------------------------------------------------------------------------------- per world
def _mean_curve(results: list[dict], key: str, stat: str | None = None) -> np.ndarray:
    curves = [r[key][stat] if stat else r[key] for r in results]
    return np.mean(np.stack(curves), axis=0)


def _bar(passed: bool | None) -> str:
    return NOT_MEASURED if passed is None else (PASS if passed else FAIL)


def collapses_within(collapse: dict, frames: int, config: CollapseConfig) -> bool:
    """Whether a case's blank or frozen flag (`collapse_frames` of the video whose frame 0 is the start frame, so
    index i is the i-th generated frame) falls within the first `frames` generated frames: the collapse bar's test,
    whatever the rollout's length. A frozen flag marks the first frame of a still window, which must end by then."""
    blank, frozen = collapse["blank"], collapse["frozen"]
    if blank is not None and blank <= frames:
        return True
    return frozen is not None and frozen + config.frozen_window - 1 <= frames


def summarise_hold_still(results: list[dict], config: EvalConfig) -> dict:
    """PSNR of the frames generated with nothing pressed against the simulator's, pooled over the cases like the
    rollout's. References: the start frame held (the world seldom stands exactly still: a doom player coasts to
    rest, a car brakes) and the simulator's frames through the VAE (the ceiling)."""
    curve = _mean_curve(results, "hold_still_mse_curve")
    start_curve = _mean_curve(results, "hold_still_mse_curve_start")
    reported = [t for t in config.hold_still_report_frames if t <= len(curve)]
    return {
        "frames": len(curve),
        "psnr_at": {str(t): psnr_of_mse(float(curve[t - 1])) for t in reported},
        # capped: a still camera's truth is its start frame, bit for bit (no error, and JSON has no inf)
        "psnr_at_start_held": {str(t): float(capped_psnr(start_curve[t - 1])) for t in reported},
        "psnr_per_frame": [psnr_of_mse(float(m)) for m in curve],
        "psnr_vae_round_trip": pooled_psnr([r["hold_still_mse_vae"] for r in results]),
    }


def summarise_world(world: str, results: list[dict], ended: list[int], config: EvalConfig, chunk: int) -> dict:
    """Aggregate the per-case numbers of one world (JSON-ready)."""
    hits = sum(r["action_hits"] for r in results)
    trials = sum(r["action_trials"] for r in results)
    following = {**binomial_summary(hits, trials), "hits": hits}
    following["skipped_cases"] = sum(not r["action_scored"] for r in results)
    hits_vae = sum(r["action_hits_vae"] for r in results)
    following["vae_round_trip"] = {**binomial_summary(hits_vae, trials), "hits": hits_vae}
    # the rollout's PSNR at each frame pooled over the cases as the next chunk's is; the capped per-frame mean beside
    mse_curve, copy_mse_curve = _mean_curve(results, "mse_curve"), _mean_curve(results, "mse_curve_copy")
    psnr_curve, copy_curve = (np.array([psnr_of_mse(float(m)) for m in curve]) for curve in (mse_curve, copy_mse_curve))
    length = len(psnr_curve)
    reported = [t for t in config.report_frames if t <= length]
    at = {str(t): float(psnr_curve[t - 1]) for t in reported}
    copy_at = {str(t): float(copy_curve[t - 1]) for t in reported}
    frame_mean_at = {str(t): float(np.mean([capped_psnr(r["mse_curve"][t - 1]) for r in results])) for t in reported}
    ssim_curve, ssim_copy_curve = _mean_curve(results, "ssim_curve"), _mean_curve(results, "ssim_curve_copy")
    model_detail = _mean_curve(results, "model_stats", "detail")
    truth_detail = _mean_curve(results, "truth_stats", "detail")
    bars = config.bars
    collapsed = [r for r in results if collapses_within(r["collapse"], bars.collapse_free_frames, config.collapse)]
    # PSNR of the squared error pooled over every case's chunk frames: a mean of per-frame PSNRs would hand copy-last
    # the cap (60 dB, an arbitrary number) on every frame where the truth stands still, and those decide the bar
    pooled_keys = {"psnr": "chunk_mse", "psnr_copy_last": "chunk_mse_copy", "psnr_vae_round_trip": "chunk_mse_vae",
                   "psnr_copy_last_via_vae": "chunk_mse_copy_vae"}  # fmt: skip
    mean_keys = {"psnr_frame_mean": "chunk_psnr", "psnr_copy_last_frame_mean": "chunk_psnr_copy", "ssim": "chunk_ssim",
                 "ssim_copy_last": "chunk_ssim_copy", "detail_kept_vae_round_trip": "chunk_detail_vae"}  # fmt: skip
    next_chunk = {"frames": chunk, "psnr_pooling": PSNR_POOLING}
    next_chunk.update({name: pooled_psnr([r[key] for r in results]) for name, key in pooled_keys.items()})
    next_chunk.update({name: float(np.mean([r[key] for r in results])) for name, key in mean_keys.items()})
    next_chunk["psnr_gain_db"] = next_chunk["psnr"] - next_chunk["psnr_copy_last"]
    next_chunk["psnr_gain_db_frame_mean"] = next_chunk["psnr_frame_mean"] - next_chunk["psnr_copy_last_frame_mean"]
    next_chunk["still_frames"] = sum(r["chunk_still_frames"] for r in results)
    # the bar's verdict on the older aggregate too: where the two disagree the report says so
    next_chunk["bar_frame_mean"] = _bar(next_chunk["psnr_gain_db_frame_mean"] >= config.bars.psnr_gain_db)
    summary = {
        "world": world,
        "cases": len(results),
        "seeds": [r["seed"] for r in results],
        "seeds_skipped_episode_ended": ended,
        "next_chunk": next_chunk,
        "action_following": following,
        "long_rollout": {
            "frames": length,
            "psnr_pooling": PSNR_POOLING,
            "psnr_at": at,
            "psnr_copy_last_at": copy_at,
            "psnr_frame_mean_at": frame_mean_at,
            "psnr_per_frame": psnr_curve.tolist(),
            "psnr_copy_last_per_frame": copy_curve.tolist(),
            "ssim_at": {t: float(ssim_curve[int(t) - 1]) for t in at},
            "ssim_copy_last_at": {t: float(ssim_copy_curve[int(t) - 1]) for t in at},
            "detail_kept_at": {t: float(model_detail[int(t) - 1] / max(truth_detail[int(t) - 1], 1e-12)) for t in at},
            "model_stats": {s: _mean_curve(results, "model_stats", s).tolist() for s in STAT_CURVES},
            "truth_stats": {s: _mean_curve(results, "truth_stats", s).tolist() for s in STAT_CURVES},
            "collapse": {
                **{f"cases_{flag}": sum(r["collapse"][flag] is not None for r in results) for flag in COLLAPSE_FLAGS},
                "per_case": [{"seed": r["seed"], **r["collapse"], "truth_via_vae": r["collapse_vae"]} for r in results],
                "vae_round_trip": {
                    f"cases_{flag}": sum(r["collapse_vae"][flag] is not None for r in results)
                    for flag in COLLAPSE_FLAGS
                },
            },
        },
        "bars": {
            "action_following": _bar(
                None if following["score"] is None else following["score"] >= bars.action_following
            ),
            "next_chunk_psnr": _bar(next_chunk["psnr_gain_db"] >= bars.psnr_gain_db),
            "no_collapse": _bar(None if length < bars.collapse_free_frames else not collapsed),
        },
    }
    if all("hold_still_mse_curve_start" in r for r in results):
        summary["hold_still"] = summarise_hold_still(results, config)
    return summary


def _write_world_plots(summary: dict, results: list[dict], out: Path, config: EvalConfig) -> dict[str, str]:
    world, long = summary["world"], summary["long_rollout"]
    frames = np.arange(1, long["frames"] + 1)
    def series(model: list[float], reference: list[float], reference_name: str) -> dict:
        return {"model": (frames, np.array(model)), reference_name: (frames, np.array(reference))}

    title = f"{world}: PSNR vs ground truth over the rollout (squared error pooled over {summary['cases']} cases)"
    curves = series(long["psnr_per_frame"], long["psnr_copy_last_per_frame"], "copy last context frame")
    psnr = line_plot(curves, title, "frame", "dB")
    panels = []
    for stat, name in STAT_CURVES.items():
        curves = series(long["model_stats"][stat], long["truth_stats"][stat], "ground truth")
        panels.append(line_plot(curves, f"{world}: {name}", "frame", stat))
    shown = [t for t in config.sheet_frames if t <= long["frames"]]
    rows = []
    for result in results[: config.sheet_cases]:
        picks = [t - 1 for t in shown]
        rows += [(f"seed {result['seed']} GT", result["frames"]["truth"][picks]),
                 (f"seed {result['seed']} GT (VAE)", result["frames"]["truth_via_vae"][picks]),
                 (f"seed {result['seed']} model", result["frames"]["model"][picks])]  # fmt: skip
    sheet = contact_sheet(rows, [f"t={t}" for t in shown])
    chunk = summary["next_chunk"]["frames"]
    first = results[0]["frames"]
    overview = [t for t in config.overview_frames if t <= long["frames"]]
    strip = contact_sheet(
        [(f"{world} truth", first["truth"][[t - 1 for t in overview]]),
         (f"{world} model", first["model"][[t - 1 for t in overview]])],
        [f"t={t}" for t in overview],
    )  # fmt: skip
    alternative = contact_sheet(
        [("true GT", first["truth"][:chunk]), ("true model", first["model"][:chunk]),
         ("alt GT", first["alternative_truth"]), ("alt model", first["alternative_model"])],
        [f"t={t}" for t in range(1, chunk + 1)],
    )  # fmt: skip
    names = {
        "psnr": f"{world}_psnr.png",
        "stats": f"{world}_stats.png",
        "contact_sheet": f"{world}_contact.png",
        "action_sheet": f"{world}_actions.png",
        "strip": f"{world}_strip.png",
    }
    save_png(psnr, out / names["psnr"])
    save_png(stack_vertically(panels), out / names["stats"])
    save_png(sheet, out / names["contact_sheet"])
    save_png(alternative, out / names["action_sheet"])
    save_png(strip, out / names["strip"])
    return names


def world_size(name: str, resolution: tuple[int, int]) -> int | tuple[int, int]:
    """The world's `size` option for the model's resolution (the bullet worlds render square frames)."""
    height, width = resolution
    if height == width:
        return height
    if name != "doom":
        raise AstraError(f"the {name} world renders square frames; the model's resolution is {height}x{width}")
    return (height, width)


def evaluate_world(world_name: str, loaded: tuple, config: EvalConfig, out: Path, device: str = "cpu") -> dict:
    model, vae, metadata, rollout_config = loaded
    resolution = tuple(model.config.resolution)
    world = make_world(world_name, size=world_size(world_name, resolution))
    chunk = 4 * model.config.chunk_frames
    future = chunk * math.ceil(config.rollout_frames / chunk)
    still = chunk * math.ceil(config.hold_still_frames / chunk)
    results, ended, mismatched = [], [], []
    seeds = iter(case_seeds(config.seed, config.cases))
    try:
        with tqdm(total=config.cases, desc=f"eval {world_name}", unit="case") as progress:
            while len(results) < config.cases:
                seed = next(seeds, None)
                if seed is None:
                    raise AstraError(
                        f"{world_name}: too many episodes ended early ({len(ended)}) or did not replay "
                        f"({len(mismatched)})"
                    )
                try:
                    case = build_case(world, seed, config.context_frames, future, chunk, config.split, still)
                except EpisodeEnded:
                    ended.append(seed)
                    continue
                except ReplayMismatch as error:  # its counterfactual truth cannot be trusted: replaced, and reported
                    mismatched.append(seed)
                    warnings.warn(str(error), stacklevel=1)
                    continue
                action_meta = metadata.get("action_meta", {}).get(world_name) or case.meta
                session = RolloutSession(model, vae, MODALITY_OF_WORLD[world_name], rollout_config, action_meta, device)
                with warnings.catch_warnings():  # the simulator's own actions: data, however rare
                    warnings.simplefilter("ignore", UnusualActionWarning)
                    result = evaluate_case(case, session, config)
                if len(results) >= config.sheet_cases:  # only the contact sheets need frames
                    del result["frames"]
                results.append(result)
                progress.update()
    finally:
        world.close()
    summary = summarise_world(world_name, results, ended, config, chunk)
    summary["seeds_skipped_replay_mismatch"] = mismatched
    summary["plots"] = _write_world_plots(summary, results, out, config)
    return summary


# ------------------------------------------------------------------------------------------------ overall
def summarise_overall(worlds: list[dict]) -> dict:
    hits = sum(w["action_following"]["hits"] for w in worlds)
    trials = sum(w["action_following"]["n"] for w in worlds)
    keys = ("psnr", "psnr_copy_last", "psnr_gain_db", "psnr_frame_mean", "psnr_copy_last_frame_mean", "ssim",
            "ssim_copy_last", "psnr_vae_round_trip", "psnr_copy_last_via_vae")
    return {
        "next_chunk": {key: float(np.mean([w["next_chunk"][key] for w in worlds])) for key in keys},
        "action_following": {
            **binomial_summary(hits, trials),
            "skipped_cases": sum(w["action_following"]["skipped_cases"] for w in worlds),
            "vae_round_trip": binomial_summary(
                sum(w["action_following"]["vae_round_trip"]["hits"] for w in worlds), trials
            ),
        },
        "all_bars_pass": all(v == PASS for w in worlds for v in w["bars"].values()),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows] + [""]


def _collapse_count(collapse: dict, flag: str) -> str:
    """A world's cases with `flag`, and how many of them the truth through the VAE shares (when recorded)."""
    count = collapse[f"cases_{flag}"]
    per_case = collapse.get("per_case", [])
    if not count or not all("truth_via_vae" in case for case in per_case):  # absent before session 28
        return str(count)
    shared = sum(case[flag] is not None and case["truth_via_vae"][flag] is not None for case in per_case)
    return f"{count} ({shared} also via VAE)"


def _psnr_bar(world: dict) -> str:
    """The PSNR bar's verdict, with the mean of per-frame PSNRs' where it differs (results since session 32)."""
    verdict, other = world["bars"]["next_chunk_psnr"], world["next_chunk"].get("bar_frame_mean")
    return verdict if other in (None, verdict) else f"{verdict} (mean of per-frame PSNRs: {other})"


def render_markdown(results: dict) -> str:
    """The human-readable report (see docs/eval.md for how to read it)."""
    worlds, overall, setup = results["worlds"], results["overall"], results["config"]
    bars = setup["bars"]
    lines = [
        "# Astra evaluation on held-out world episodes"
        if setup.get("split", "heldout") == "heldout"
        else "# Astra evaluation on TRAIN-split episodes (for tuning only, not a result)",
        "",
        f"Checkpoint `{results['checkpoint']}`; {setup['cases']} cases per world from {setup.get('split', 'heldout')} seeds "
        f"{setup['seed']}+; context {setup['context_frames']} frames (the model starts from the last one); "
        f"sampler {results['sampler']}. How to read this: docs/eval.md.",
        "",
    ]
    if results.get("overview"):  # results.json written before it had none
        lines += [f"![each world's first case, the simulator's frames above the model's]({results['overview']})", ""]
    lines += ["## Bars", ""]
    lines += _table(
        ["world", f"action following >= {bars['action_following']:.2f}",
         f"one-chunk PSNR >= copy-last + {bars['psnr_gain_db']:g} dB",
         f"no collapse in {bars['collapse_free_frames']} frames"],
        [[w["world"], w["bars"]["action_following"], _psnr_bar(w), w["bars"]["no_collapse"]] for w in worlds]
        + [["**all**", f"**{PASS if overall['all_bars_pass'] else FAIL}**", "", ""]],
    )  # fmt: skip

    def chunk_row(name: str, n: dict, frames: Any, still: Any) -> list[Any]:
        return [name, frames, still, _fmt(n["psnr"]), _fmt(n["psnr_copy_last"]), _fmt(n["psnr_gain_db"]),
                f"{_fmt(n['psnr_frame_mean'])} / {_fmt(n['psnr_copy_last_frame_mean'])}",
                _fmt(n["ssim"], 3), _fmt(n["ssim_copy_last"], 3), _fmt(n["psnr_vae_round_trip"]),
                _fmt(n["psnr_copy_last_via_vae"])]  # fmt: skip

    lines += [
        "## Next-chunk prediction (first chunk after the context)",
        "",
        "PSNR of the squared error pooled over the world's cases and chunk frames (what the bar uses). The mean of "
        f"per-frame PSNRs beside it caps each frame at {PSNR_CAP_DB:g} dB: where the truth stands still (column "
        "'still frames') copy-last is exact and collects the cap, an arbitrary number. Two references inside the "
        "model's latent space: the true chunk encoded and decoded by the VAE (what a model that predicted the true "
        "latents exactly would score: the practical ceiling) and the start frame as the model sees it (after the VAE), "
        "repeated (what a network that only copied would score).",
        "",
    ]
    lines += _table(
        ["world", "frames", "still frames", "PSNR model", "PSNR copy-last", "gain dB",
         "mean per-frame PSNR model / copy-last", "SSIM model", "SSIM copy-last",
         "PSNR VAE round trip (ceiling)", "PSNR copy-last via VAE"],
        [chunk_row(w["world"], w["next_chunk"], w["next_chunk"]["frames"],
                   f"{w['next_chunk']['still_frames']} of {w['next_chunk']['frames'] * w['cases']}") for w in worlds]
        + [chunk_row("**mean**", overall["next_chunk"], "", "")],
    )  # fmt: skip

    lines += ["## Action following (true vs mirrored actions, 0.5 = chance)", ""]
    following = [(w["world"], w["action_following"]) for w in worlds] + [("**pooled**", overall["action_following"])]
    lines += ["The last column is the same test for the two true futures through the VAE (encoded and decoded): what "
              "a model that predicted both futures' latents exactly would score, the ceiling this VAE allows.", ""]
    lines += _table(
        ["world", "score", "stderr", "generations n", "cases skipped (futures alike)", "truth through the VAE"],
        [[name, _fmt(a["score"]), _fmt(a["stderr"]), a["n"], a["skipped_cases"], _fmt(a["vae_round_trip"]["score"])]
         for name, a in following],
    )

    frames = [str(t) for t in setup["report_frames"]]
    lines += ["## Long rollouts (PSNR dB at frame t: model / copy-last-context)", ""]
    if any(w["long_rollout"].get("psnr_pooling") == PSNR_POOLING for w in worlds):
        lines += ["Each frame's PSNR is of the squared error pooled over the world's cases, as the next chunk's; the "
                  "mean of per-frame PSNRs (capped at 60 dB) is in results.json as `psnr_frame_mean_at`.", ""]
    rows = []
    for w in worlds:
        long = w["long_rollout"]
        cells = [f"{_fmt(long['psnr_at'].get(t))} / {_fmt(long['psnr_copy_last_at'].get(t))}" for t in frames]
        collapse = long["collapse"]
        counts = [_collapse_count(collapse, flag) for flag in COLLAPSE_FLAGS]
        reference = collapse.get("vae_round_trip")  # absent from results written before session 28
        via_vae = "-" if reference is None else " / ".join(str(reference[f"cases_{flag}"]) for flag in COLLAPSE_FLAGS)
        rows.append([w["world"], *cells, *counts, via_vae])
    lines += _table(["world", *(f"t={t}" for t in frames), "blank cases (whole rollout)",
                     "frozen cases (whole rollout)", "saturated cases (whole rollout)",
                     "truth via VAE: blank / frozen / saturated"], rows)  # fmt: skip
    lines += [f"The case counts cover the whole rollout; the collapse bar counts only blank or frozen frames among the "
              f"first {bars['collapse_free_frames']} generated frames. The last column flags the ground truth encoded "
              "and decoded by the VAE as if it were a generation: what a model that predicted the true latents exactly "
              "would be charged with; \"also via VAE\" counts the model's flagged cases whose truth through the VAE is "
              "flagged the same way.", ""]
    lines += ["SSIM at frame t (model / copy-last-context): structure, which PSNR does not tell from a field of the "
              "scene's mean colour.", ""]
    rows = [[w["world"], *(f"{_fmt(w['long_rollout']['ssim_at'].get(t), 3)} / "
                           f"{_fmt(w['long_rollout']['ssim_copy_last_at'].get(t), 3)}" for t in frames)]
            for w in worlds]  # fmt: skip
    lines += _table(["world", *(f"t={t}" for t in frames)], rows)
    lines += ["Detail kept at frame t (the model's mean |neighbour difference| over the ground truth's; blur lowers it, "
              "a flat field has none, noisy or hard-edged colour can exceed the truth's) and, as the reference, what the "
              "VAE round trip keeps of the first chunk's.", ""]
    rows = [[w["world"], *(_fmt(w["long_rollout"]["detail_kept_at"].get(t)) for t in frames),
             _fmt(w["next_chunk"]["detail_kept_vae_round_trip"])] for w in worlds]  # fmt: skip
    lines += _table(["world", *(f"t={t}" for t in frames), "VAE round trip"], rows)
    saturation = setup["collapse"]
    lines += [
        "Saturated (not part of the issue's collapse bar, which counts blank or frozen frames): more than "
        f"{saturation['saturated_fraction']:.0%} of a frame's pixels above {saturation['saturated_level']:.0%} "
        "in every channel while the ground truth's frame is not.",
        "",
    ]

    # absent from results written before session 35, scored against the start frame in session 35
    held = [w for w in worlds if "psnr_at_start_held" in w.get("hold_still", {})]
    if held:
        still_frames = sorted({t for w in held for t in w["hold_still"]["psnr_at"]}, key=int)
        lines += ["## Hold still (PSNR dB of frame t, nothing pressed: model / start frame held)", "",
                  "From the same start the player lets go (no key, no motion, the gripper kept) and the simulator "
                  "renders the truth; the model generates from the rows the simulator reports meanwhile. Beside "
                  "the model, the start frame held still, scored against the same truth "
                  f"({PSNR_CAP_DB:g} dB is the cap: the world did not move). The last column is the truth through "
                  "the VAE: the ceiling.", ""]
        rows = [[w["world"], *(f"{_fmt(w['hold_still']['psnr_at'].get(t))} / "
                               f"{_fmt(w['hold_still']['psnr_at_start_held'].get(t))}" for t in still_frames),
                 _fmt(w["hold_still"]["psnr_vae_round_trip"])] for w in held]  # fmt: skip
        lines += _table(["world", *(f"t={t}" for t in still_frames), "truth through the VAE"], rows)

    lines += ["## Plots", ""]
    for w in worlds:
        plots = w["plots"]
        lines.append(
            f"- {w['world']}: [PSNR over time]({plots['psnr']}), [frame statistics]({plots['stats']}), "
            f"[contact sheet]({plots['contact_sheet']}), [true vs alternative actions]({plots['action_sheet']})"
            + (f", [first case, truth above the model]({plots['strip']})" if "strip" in plots else "")
        )
        lines.append(f"  ![{w['world']} contact sheet]({plots['contact_sheet']})")
    ended = {w["world"]: w["seeds_skipped_episode_ended"] for w in worlds if w["seeds_skipped_episode_ended"]}
    if ended:
        lines += ["", f"Seeds replaced because the episode ended early: {ended}."]
    mismatched = {w["world"]: w["seeds_skipped_replay_mismatch"] for w in worlds if w.get("seeds_skipped_replay_mismatch")}
    if mismatched:
        lines += ["", f"Seeds replaced because replaying their controls did not reproduce the frames: {mismatched}."]
    return "\n".join(lines) + "\n"



def describe_sampler(config: RolloutConfig) -> str:
    return (
        f"{config.num_steps} Euler steps, shift {config.shift}, guidance {config.guidance_scale} at t in "
        f"{list(config.guidance_interval)} ({config.guidance_outside} outside), history noise {config.history_noise}, "
        f"noise scale {config.noise_scale}" + (
            f", stats anchor {config.stats_anchor} ({config.stats_anchor_match})" if config.stats_anchor else "")
        + (", guidance moves the anchor" if config.guide_anchor else "")
    )


def loaded_model(
    checkpoint: str | Path, loaded: tuple | None, seed: int, device: str, sampling: dict[str, Any]
) -> tuple[str, tuple]:
    """(what the results name as the checkpoint, (model, vae, metadata, RolloutConfig)): `loaded` as given (an
    in-process model), else `checkpoint` loaded with the sampler keywords of `load_rollout`."""
    if loaded is not None:
        return "in-process model", loaded
    return str(checkpoint), load_rollout(checkpoint, seed=seed, device=device, **sampling)


def evaluate(
    config: EvalConfig,
    out: str | Path,
    checkpoint: str | Path = "astra-small",
    loaded: tuple | None = None,
    device: str = "cpu",
    **sampling: Any,
) -> dict:
    """Evaluate every world of `config` and write the report into `out`. `sampling`: the sampler keywords of
    `load_rollout`; `loaded` = (model, vae, metadata, RolloutConfig) skips loading `checkpoint` (tests inject a random
    tiny model this way)."""
    config.validate()
    source, loaded = loaded_model(checkpoint, loaded, config.seed, device, sampling)
    torch.manual_seed(config.seed)  # the sessions seed their own noise; this covers anything else that draws
    with staged_files(Path(out), last=("results.json", "report.md")) as staging:  # a failed run changes nothing
        worlds = [evaluate_world(name, loaded, config, staging, device) for name in config.worlds]
        save_png(stack_vertically([load_png(staging / w["plots"]["strip"]) for w in worlds]), staging / OVERVIEW_FILE)
        rollout_config: RolloutConfig = loaded[3]
        results = {
            "checkpoint": source,
            "overview": OVERVIEW_FILE,
            "sampler": describe_sampler(rollout_config),
            "sampling": rollout_config.sampling(),  # for `astra eval --compare`
            "config": asdict(config),
            "worlds": worlds,
            "overall": summarise_overall(worlds),
        }
        (staging / "results.json").write_text(json.dumps(results, indent=1))
        (staging / "report.md").write_text(render_markdown(results))
    return results
