"""Counterfactual pairs: two short episodes that share every frame but the last chunk's, which one reaches under
the policy's controls and the other under those controls mirrored.

Why: in ordinary episodes every history is followed by one future only, so a network can lower its loss by
predicting the average future and ignoring the actions (sessions 29-41 of docs/results.md). A pair shows the same
history with two futures that differ only by the actions, so the difference of the two predictions has to come
from the actions (`pair_loss_weight` in astra.train.config).

Episode `<world>-pair-<seed:06d>-a` is the policy's 1 + 4 * H frames: H latent frames of history and one
target latent frame; `...-b` replays the same controls from the same seed and mirrors the last chunk's
(astra.eval.cases.alternative_controls; the extra step after the last frame too). Both are ordinary episodes
(astra.data.format), so `astra data encode` encodes them; `meta["pair"]` names the seed, the branch and the
history length. Seeds whose mirrored chunk equals the true one (nothing pressed) or whose replay differs are
skipped. Resumable: complete pairs are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from astra.actions.align import FRAMES_PER_LATENT
from astra.data.format import META_FILE, write_episode
from astra.eval.cases import alternative_controls, make_policy
from astra.worlds import EpisodeEnded
from astra.worlds.base import Policy, World, make_world
from astra.worlds.record import record_episode

BRANCHES = ("a", "b")  # a: the policy's last chunk; b: its mirror


def pair_name(world: str, seed: int, branch: str) -> str:
    return f"{world}-pair-{seed:06d}-{branch}"


class ScriptedPolicy(Policy):
    """Replays a fixed control sequence (for the mirrored branch)."""

    name = "scripted"

    def __init__(self, controls: np.ndarray):
        self.controls = controls

    def reset(self, seed: int) -> None:
        pass

    def __call__(self, world: World, frame_index: int) -> np.ndarray:
        return self.controls[frame_index]


def record_pair(world: World, seed: int, history_latents: int, split: str = "train"):
    """(episode a, episode b) or None when the pair is useless (idle chunk) or not reproducible."""
    frames = 1 + FRAMES_PER_LATENT * history_latents
    prefix = 1 + FRAMES_PER_LATENT * (history_latents - 1)  # frames both branches share
    true = record_episode(world, make_policy(world.name, seed), seed, split, frames)
    if true.num_frames != frames:
        return None  # ended early
    branch_start = prefix - 1  # the control that leaves the last shared frame
    mirrored = alternative_controls(world.name, true.controls[branch_start:])
    if np.array_equal(mirrored[:FRAMES_PER_LATENT], true.controls[branch_start : branch_start + FRAMES_PER_LATENT]):
        return None
    controls = np.concatenate([true.controls[:branch_start], mirrored])
    other = record_episode(world, ScriptedPolicy(controls), seed, split, frames)
    if other.num_frames != frames or not np.array_equal(other.frames[:prefix], true.frames[:prefix]):
        return None
    for branch, episode in zip(BRANCHES, (true, other)):
        episode.meta["pair"] = {"seed": seed, "branch": branch, "history_latents": history_latents}
    return true, other


@dataclass(frozen=True)
class PairRecordConfig:
    world: str
    out: Path
    pairs: int
    max_history_latents: int = 12  # history lengths 1..this, drawn per pair
    size: int = 64
    seed: int = 500_000
    split: str = "train"


def record_pairs(config: PairRecordConfig) -> int:
    """Record `config.pairs` useful pairs (trying seeds from `config.seed` on); returns how many were written."""
    world = make_world(config.world, size=config.size)
    rng = np.random.default_rng(config.seed)
    written, seed = 0, config.seed
    progress = tqdm(total=config.pairs, desc=f"pairs {config.world}", unit="pair")
    try:
        while written < config.pairs:
            history = int(rng.integers(1, config.max_history_latents + 1))
            names = [pair_name(config.world, seed, branch) for branch in BRANCHES]
            if all((config.out / name / META_FILE).exists() for name in names):
                written += 1
            else:
                try:
                    pair = record_pair(world, seed, history, config.split)
                except EpisodeEnded:
                    pair = None
                if pair is not None:
                    for name, episode in zip(names, pair):
                        write_episode(config.out, name, episode, overwrite=True)
                    written += 1
                    progress.update(1)
            seed += 1
    finally:
        progress.close()
        world.close()
    return written


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pairs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=500_000)
    args = parser.parse_args()
    print(record_pairs(PairRecordConfig(args.world, args.out, args.pairs, seed=args.seed)))
