"""`astra eval --presets`: long rollouts under each action preset of a world (held turns, straight drives, ...) from
held-out start frames, scored without ground truth.

The held-out evaluation replays the simulator's own explorer, which rarely holds one action for long; held doom
turns are what burned the picture white (docs/results.md, sessions 10-17). This test holds every preset of the
world's modality for the whole rollout and reports, per preset and start, the mean fraction of saturated pixels
(every channel above `saturated_level`) over the frames from `late_from` on, and whether any frame went blank or
froze. It writes presets.md, presets.json and one contact sheet per world.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from astra.actions.align import FRAMES_PER_LATENT
from astra.actions.parse import PRESETS, get_preset
from astra.errors import AstraError, UnusualActionWarning
from astra.eval.metrics import CollapseConfig, collapse_masks, first_true, frame_stats
from astra.eval.plots import contact_sheet, save_png
from astra.eval.report import check_worlds, describe_sampler, loaded_model, world_size
from astra.files import staged_files
from astra.rollout.session import MODALITY_OF_WORLD, RolloutSession
from astra.worlds.base import make_world


@dataclass(frozen=True)
class PresetStressConfig:
    worlds: tuple[str, ...] = ("doom", "robot", "camera", "drive")
    starts: int = 4  # held-out start frames per world (seeds seed, seed + 1, ...)
    rollout_frames: int = 256
    late_from: int = 128  # the saturated fraction is averaged over frames late_from..rollout_frames
    seed: int = 0
    split: str = "heldout"
    sheet_frames: tuple[int, ...] = (0, 4, 16, 32, 64, 128, 192, 256)  # 0 = the start frame
    collapse: CollapseConfig = CollapseConfig()

    def validate(self) -> None:
        check_worlds(self.worlds)
        if self.starts < 1:
            raise AstraError(f"--cases (start frames per world) must be >= 1, got {self.starts}")
        if self.rollout_frames < 1:
            raise AstraError(f"--rollout-frames must be >= 1, got {self.rollout_frames}")
        if not 0 <= self.late_from < self.rollout_frames:
            raise AstraError(f"late_from must be in [0, {self.rollout_frames}), got {self.late_from}")


def rollout(session: RolloutSession, start: np.ndarray, latent_rows: np.ndarray, seed: int) -> np.ndarray:
    """[1 + F, H, W, 3]: the start frame as the model sees it, then the frames generated under per-latent-frame
    actions, chunk by chunk."""
    start_frame = session.start(start, seed=seed)
    chunk = session.chunk_frames
    with warnings.catch_warnings():  # presets may sit outside the training range on purpose
        warnings.simplefilter("ignore", UnusualActionWarning)
        chunks = [session.step_latent(latent_rows[i : i + chunk]) for i in range(0, len(latent_rows), chunk)]
    return np.concatenate([start_frame[None], *chunks])


def score_rollout(video: np.ndarray, config: PresetStressConfig) -> dict[str, Any]:
    """`video`: the start frame, then the generated frames. Mean saturated fraction of generated frames from
    `late_from` on; the first generated frame (1-based, or None) that is blank or starts a frozen window."""
    stats = frame_stats(video, config.collapse.saturated_level)
    masks = collapse_masks(stats, stats["std"][0], config.collapse)  # blank: most of the start frame's contrast lost
    generated = np.arange(len(video)) > 0  # frame 0 is the input, not a generation
    return {
        "start_saturated": float(stats["saturated"][0]),
        "late_saturated": float(stats["saturated"][1 + config.late_from :].mean()),
        "max_saturated": float(stats["saturated"][1:].max()),
        "blank": first_true(masks["blank"] & generated),
        "frozen": first_true(masks["frozen"] & generated),
    }


def stress_world(world_name: str, loaded: tuple, config: PresetStressConfig, out: Path, device: str = "cpu") -> dict:
    model, vae, metadata, rollout_config = loaded
    modality = MODALITY_OF_WORLD[world_name]
    action_meta = metadata.get("action_meta", {}).get(world_name, {})
    chunk = model.config.chunk_frames
    latent_frames = -(-config.rollout_frames // (FRAMES_PER_LATENT * chunk)) * chunk  # whole chunks, rounded up
    world = make_world(world_name, size=world_size(world_name, tuple(model.config.resolution)))
    try:
        starts = [world.reset(config.seed + index, config.split) for index in range(config.starts)]
    finally:
        world.close()
    presets, sheet_rows = {}, []
    shown = [t for t in config.sheet_frames if t <= config.rollout_frames]
    names = list(PRESETS[modality])
    with tqdm(total=len(names) * len(starts), desc=f"presets {world_name}", unit="rollout") as progress:
        for name in names:
            rows = get_preset(name, modality, latent_frames)
            scores = []
            for index, start in enumerate(starts):
                session = RolloutSession(model, vae, modality, rollout_config, action_meta, device)
                video = rollout(session, start, rows, config.seed + index)[: 1 + config.rollout_frames]
                scores.append(score_rollout(video, config))
                if index == 0:
                    sheet_rows.append((name, video[shown]))
                progress.update()
            presets[name] = {
                "start_saturated": [s["start_saturated"] for s in scores],
                "late_saturated": [s["late_saturated"] for s in scores],
                "max_saturated": [s["max_saturated"] for s in scores],
                "blank": [s["blank"] for s in scores],
                "frozen": [s["frozen"] for s in scores],
            }
    sheet = f"presets_{world_name}.png"
    save_png(contact_sheet(sheet_rows, [f"t={t}" for t in shown]), out / sheet)
    return {"world": world_name, "modality": modality, "presets": presets, "contact_sheet": sheet}


def render_markdown(results: dict) -> str:
    config = results["config"]
    level, late = config["collapse"]["saturated_level"], config["late_from"]
    lines = [
        "# Preset stress test",
        "",
        f"Checkpoint `{results['checkpoint']}`; sampler {results['sampler']}. Each action preset held for "
        f"{config['rollout_frames']} frames from {config['starts']} {config['split']} start frames per world. "
        f"Saturated: the mean fraction of pixels with every channel above {level}, over frames {late + 1}-"
        f"{config['rollout_frames']} (one number per start; the first row gives the start frames' own, for scenes "
        "that are bright by nature); blank / frozen: starts with a blank frame (under a quarter of the start "
        "frame's spatial contrast) or a frozen window (the threshold of `astra eval`).",
        "",
    ]
    for world in results["worlds"]:
        reference = next(iter(world["presets"].values()))["start_saturated"]  # the same starts for every preset
        lines += [
            f"## {world['world']} ({world['modality']})",
            "",
            "| preset | saturated per start | worst | blank | frozen |",
            "|---|---|---|---|---|",
            f"| (the start frames) | {' / '.join(f'{v:.3f}' for v in reference)} | {max(reference):.3f} | | |",
        ]
        for name, scores in world["presets"].items():
            saturated = " / ".join(f"{v:.3f}" for v in scores["late_saturated"])
            blank = sum(v is not None for v in scores["blank"])
            frozen = sum(v is not None for v in scores["frozen"])
            lines.append(f"| {name} | {saturated} | {max(scores['late_saturated']):.3f} | {blank} | {frozen} |")
        lines += ["", f"![{world['world']} presets, first start]({world['contact_sheet']})", ""]
    return "\n".join(lines)


def stress_presets(
    config: PresetStressConfig,
    out: str | Path,
    checkpoint: str | Path = "astra-small",
    loaded: tuple | None = None,
    device: str = "cpu",
    **sampling: Any,
) -> dict:
    """Run the preset stress test on every world of `config`; write presets.md / presets.json into `out`.
    `sampling`: the sampler keywords of `load_rollout`; `loaded` skips loading (tests inject a tiny model)."""
    config.validate()
    source, loaded = loaded_model(checkpoint, loaded, config.seed, device, sampling)
    with staged_files(Path(out), last=("presets.json", "presets.md")) as staging:  # a failed run changes nothing
        results = {
            "checkpoint": source,
            "sampler": describe_sampler(loaded[3]),
            "config": asdict(config),
            "worlds": [stress_world(name, loaded, config, staging, device) for name in config.worlds],
        }
        (staging / "presets.json").write_text(json.dumps(results, indent=1))
        (staging / "presets.md").write_text(render_markdown(results))
    return results
