"""`astra eval --compare A B ...`: earlier evaluations side by side, the first one as the reference.

A candidate checkpoint is worth shipping only if it beats the shipped one on the same cases, so the table
names every setting in which the runs differ (split, seeds, case count, rollout length, sampler) instead of
comparing them silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from astra.errors import AstraError
from astra.eval.metrics import COLLAPSE_FLAGS
from astra.eval.report import PSNR_POOLING, _fmt, _table
from astra.rollout.session import RolloutConfig

# the EvalConfig fields that decide which cases were scored and how
SETUP_FIELDS = ("split", "seed", "cases", "context_frames", "rollout_frames")


def load_results(folder: str | Path) -> dict:
    """The results.json of one `astra eval --out FOLDER`, checked enough to tabulate."""
    path = Path(folder)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise AstraError(f"{path}: no such file (expected the results.json that `astra eval --out` writes)")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AstraError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(results, dict) or not isinstance(results.get("worlds"), list) or "config" not in results:
        raise AstraError(f"{path}: not an `astra eval` results.json (no 'worlds' list or 'config')")
    for index, world in enumerate(results["worlds"]):
        if not isinstance(world, dict):
            raise AstraError(f"{path}: worlds[{index}] is not an object")
        missing = [key for key in ("world", "next_chunk", "action_following", "long_rollout") if key not in world]
        if missing:
            raise AstraError(f"{path}: worlds[{index}] lacks {', '.join(missing)}")
    try:  # a value of the wrong kind (a hand-edited file) is found here, naming the file, not amid the comparison
        setup_differences({path.name: results})
        compare_table({path.name: results})
    except (TypeError, KeyError, AttributeError, ValueError) as error:
        kind = type(error).__name__
        raise AstraError(f"{path}: a value of the wrong kind in results.json ({kind}: {error})") from None
    return results


def _pooled_flags(runs: dict[str, dict], part: str) -> list[bool]:
    """Per world of every run: whether it took the PSNR of `part` ("next_chunk", since session 32, or
    "long_rollout", since session 34) of the pooled squared error."""
    return [w[part].get("psnr_pooling") == PSNR_POOLING for run in runs.values() for w in run["worlds"]]


def all_pooled(runs: dict[str, dict], part: str = "next_chunk") -> bool:
    return all(_pooled_flags(runs, part))


def chunk_psnr(chunk: dict, pooled: bool) -> tuple[float, float]:
    """(model, copy-last) next-chunk PSNR of one world: the pooled one, or where some run predates it the mean of
    per-frame PSNRs every run has (such a run holds it under "psnr"), so no table ranks one kind against the other."""
    if pooled or "psnr_pooling" not in chunk:
        return chunk["psnr"], chunk["psnr_copy_last"]
    return chunk["psnr_frame_mean"], chunk["psnr_copy_last_frame_mean"]


def _sampler_of(run: dict, key: str) -> str | dict:
    """A run's sampler record; settings added after the run was written (absent) at their defaults, which
    reproduce what the sampler did before they existed."""
    if key != "sampling":
        return run.get(key)
    return RolloutConfig().sampling() | run["sampling"]


def setup_differences(runs: dict[str, dict]) -> list[str]:
    """One line per setting whose value differs between the runs (empty when they scored the same cases)."""
    lines = []
    # the sampler's settings where every run recorded them (since session 15), else its description
    sampler = "sampling" if all("sampling" in run for run in runs.values()) else "sampler"
    for field in (*SETUP_FIELDS, sampler):
        values = {name: (_sampler_of(run, sampler) if field == sampler else run["config"].get(field))
                  for name, run in runs.items()}  # fmt: skip
        if len({json.dumps(value, sort_keys=True) for value in values.values()}) > 1:
            lines.append(f"{field} differs: " + "; ".join(f"{name} {value}" for name, value in values.items()))
    for part, what in (("next_chunk", "next-chunk PSNR"), ("long_rollout", "rollout PSNR")):
        pooled = _pooled_flags(runs, part)
        if any(pooled) and not all(pooled):
            lines.append(f"{what}: some runs predate the pooled PSNR; the table shows the mean of per-frame PSNRs")
    return lines


def _last_rollout_scores(world: dict, pooled: bool) -> tuple[str, float | None, float | None]:
    """(frame, PSNR, SSIM) at the latest report frame of the long rollout (no SSIM in results before session 26):
    the pooled PSNR, or where some run predates it the mean of per-frame PSNRs, as `chunk_psnr` chooses."""
    long = world["long_rollout"]
    at = long.get("psnr_at", {}) if pooled or "psnr_pooling" not in long else long["psnr_frame_mean_at"]
    if not at:
        return "-", None, None
    frame = max(at, key=int)
    return frame, at[frame], long.get("ssim_at", {}).get(frame)


def _hold_still_cell(world: dict) -> str:
    """'model / start held (frame)' PSNR at the latest hold-still frame; '-' for results before session 36 (none, or
    scored against the start frame rather than the simulator's)."""
    held = world.get("hold_still", {})
    if "psnr_at_start_held" not in held or not held["psnr_at"]:
        return "-"
    frame = max(held["psnr_at"], key=int)
    return f"{_fmt(held['psnr_at'][frame])} / {_fmt(held['psnr_at_start_held'][frame])} ({frame})"


def _signed(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def compare_table(runs: dict[str, dict]) -> str:
    """A markdown table, one row per world and run plus a pooled row per run; deltas against the first run."""
    if not runs:
        raise AstraError("nothing to compare")
    names = list(runs)
    use_pooled, rollout_pooled = all_pooled(runs), all_pooled(runs, "long_rollout")
    reference = {w["world"]: w for w in runs[names[0]]["worlds"]}
    header = ["world", "run", "next-chunk PSNR", "vs copy-last", f"vs {names[0]}", "following (hits/n)",
              f"following vs {names[0]}", "rollout PSNR / SSIM (frame)", "blank / frozen / saturated cases",
              "hold still PSNR / start held (frame)"]  # fmt: skip
    rows = []
    worlds = list(dict.fromkeys(w["world"] for run in runs.values() for w in run["worlds"]))
    for world_name in worlds:
        for name in names:
            world = next((w for w in runs[name]["worlds"] if w["world"] == world_name), None)
            if world is None:
                rows.append([world_name, name, "not evaluated", *[""] * (len(header) - 3)])
                continue
            chunk, following = world["next_chunk"], world["action_following"]
            base = reference.get(world_name)
            psnr, copy_last = chunk_psnr(chunk, use_pooled)
            base_psnr = None if base is None else chunk_psnr(base["next_chunk"], use_pooled)[0]
            psnr_delta = None if base_psnr is None or name == names[0] else psnr - base_psnr
            score, base_score = following.get("score"), None if base is None else base["action_following"].get("score")
            follow_delta = None if name == names[0] or score is None or base_score is None else score - base_score
            frame, rollout, rollout_ssim = _last_rollout_scores(world, rollout_pooled)
            collapse = world["long_rollout"].get("collapse", {})
            counts = [collapse.get(f"cases_{flag}") for flag in COLLAPSE_FLAGS]
            cells = [
                world_name, name, _fmt(psnr), _signed(psnr - copy_last),
                _signed(psnr_delta), f"{_fmt(score)} ({following['hits']}/{following['n']})",
                _signed(follow_delta), f"{_fmt(rollout)} / {_fmt(rollout_ssim, 3)} ({frame})",
                " / ".join("-" if count is None else str(count) for count in counts) + f" of {world['cases']}",
                _hold_still_cell(world),
            ]  # fmt: skip
            rows.append(cells)
    # pooled over the worlds every run evaluated, so that a run of fewer worlds is not ranked on other cases
    common = [w for w in worlds if all(any(x["world"] == w for x in run["worlds"]) for run in runs.values())]
    label = "pooled" if len(common) == len(worlds) else f"pooled ({', '.join(common)})"
    pooled = {name: [w for w in runs[name]["worlds"] if w["world"] in common] for name in names}

    def pooled_row(name: str) -> np.ndarray:  # (model, copy-last) PSNR per common world
        return np.array([chunk_psnr(w["next_chunk"], use_pooled) for w in pooled[name]])

    reference_psnr = float(pooled_row(names[0])[:, 0].mean()) if common else None
    for name in (names if common else []):
        values = pooled_row(name)
        run_psnr, gain = float(values[:, 0].mean()), float((values[:, 0] - values[:, 1]).mean())
        hits = sum(w["action_following"]["hits"] for w in pooled[name])
        trials = sum(w["action_following"]["n"] for w in pooled[name])
        score = hits / trials if trials else None
        cells = [label, name, _fmt(run_psnr), _signed(gain),
                 _signed(None if name == names[0] else run_psnr - reference_psnr),
                 f"{_fmt(score)} ({hits}/{trials})", "", "", "", ""]  # fmt: skip
        rows.append(cells)
    return "\n".join(_table(header, rows))


def compare(folders: list[str]) -> str:
    """The comparison as printed by `astra eval --compare`: setting differences first, then the table."""
    if len(folders) < 2:
        raise AstraError(f"--compare needs at least two result folders, got {len(folders)}")
    runs: dict[str, dict] = {}
    for folder in folders:
        name = Path(folder).name if Path(folder).is_dir() else Path(folder).parent.name
        while name in runs:  # two folders of the same name: keep both apart
            name += "'"
        runs[name] = load_results(folder)
    notes = setup_differences(runs)
    warning = "".join(f"warning: {line}\n" for line in notes)
    if any(run["config"].get("split") != "heldout" for run in runs.values()):
        warning += "note: a run on the train split tunes sampling; report held-out numbers only\n"
    return warning + compare_table(runs)
