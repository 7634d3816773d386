"""Record action-labelled episodes from any registered world with its default exploration policy.

Frame t is observed, the policy's control c_t is applied, and row t of `actions`/`controls` is that input
(the input applied going from frame t to t + 1). To have a row for the last frame too, one extra step is taken
after it and its frame dropped; if that step ends the episode, every frame is kept and the last row (never used
for a latent action) is the identity action. Episodes are named `<world>-<split>-<seed:06d>`; complete episodes
(meta.json present, written last and atomically) are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from astra.actions.align import identity_action
from astra.actions.modalities import KEYBOARD_KEYS, get_modality
from astra.cli import interrupt_on_terminate
from astra.config_fields import MAX_SEED
from astra.data.format import META_FILE, Episode, read_meta, write_episode
from astra.errors import DataError
from astra.worlds import EpisodeEnded
from astra.worlds.base import SPLITS, WORLDS, World, make_world

MAX_EPISODE_BYTES = 2 * 2**30  # frames x size x size x 3 of one episode, kept in memory until it is written
MIN_EPISODE_FRAMES = 5  # an episode cut short by the simulator is kept only if it has this many frames


@dataclass(frozen=True)
class RecordConfig:
    world: str
    out: Path
    episodes: int
    frames: int = 161  # 4k + 1: whole latent frames for the 4x temporal VAE
    size: int = 64
    split: str = "train"
    seed: int = 0
    workers: int = 1
    world_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"unknown world {self.world!r}; known worlds: {', '.join(WORLDS)}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.episodes < 1 or self.frames < 1 or self.workers < 1 or self.size < 1:
            raise ValueError("episodes, frames, size and workers must all be >= 1")
        episode_bytes = self.frames * self.size * self.size * 3  # an episode is held in memory until written
        if episode_bytes > MAX_EPISODE_BYTES:
            raise ValueError(
                f"--frames {self.frames:,} at --size {self.size} makes {episode_bytes / 2**30:.1f} GiB per episode, "
                f"over the {MAX_EPISODE_BYTES / 2**30:g} GiB an episode may hold in memory: record more, shorter ones"
            )
        if self.seed + self.episodes - 1 > MAX_SEED:
            raise ValueError(f"--seed {self.seed} + {self.episodes} episodes passes the largest seed {MAX_SEED:,}")


def episode_name(world: str, split: str, seed: int) -> str:
    return f"{world}-{split}-{seed:06d}"


def make_policy(world: str, seed: int):
    """The default exploration policy of a registered world (its module's make_policy)."""
    module_name = WORLDS[world].split(":")[0]
    return importlib.import_module(module_name).make_policy(seed)


def action_statistics(actions: np.ndarray, modality: str) -> dict[str, float]:
    """How often each key is held and how much the mouse moves (keyboard_mouse); mean |value| per column
    otherwise. Used to check that a policy covers the controls."""
    columns = get_modality(modality).columns
    actions = np.asarray(actions, dtype=np.float64)
    if modality == "keyboard_mouse":
        keys = actions[:, : len(KEYBOARD_KEYS)]
        stats = {f"frac_{name}": float(keys[:, i].mean()) for i, name in enumerate(KEYBOARD_KEYS)}
        stats["frac_no_key"] = float((keys == 0).all(axis=1).mean())
        stats["frac_mouse"] = float((actions[:, len(KEYBOARD_KEYS)] != 0).mean())
        stats["mean_abs_mouse_dx"] = float(np.abs(actions[:, len(KEYBOARD_KEYS)]).mean())
        return stats
    return {f"mean_abs_{name}": float(np.abs(actions[:, i]).mean()) for i, name in enumerate(columns)}


def record_episode(world: World, policy, seed: int, split: str, frames: int, on_frame=None) -> Episode:
    """One episode of `frames` frames (fewer, cut to 4k + 1, if the simulator ends it early)."""
    policy.reset(seed)
    observed, rows, controls, poses = [world.reset(seed, split)], [], [], []
    meta = dict(world.episode_meta())
    ended_early = False
    for index in range(frames):
        poses.append(world.pose())
        control = np.asarray(policy(world, index), dtype=np.float32)
        try:
            frame = world.step(control)
            row = world.action_row()
        except EpisodeEnded:
            if index + 1 < frames:
                ended_early = True
                break
            row = identity_action(world.modality)  # only the extra step ended it: no frame is missing
        controls.append(control)
        rows.append(row)
        if index + 1 < frames:
            observed.append(frame)
        if on_frame is not None:
            on_frame()
    if ended_early:
        kept = ((len(rows) - 1) // 4) * 4 + 1 if rows else 0
        if kept < MIN_EPISODE_FRAMES:
            raise EpisodeEnded(f"{world.name} seed {seed}: the simulator ended the episode after {len(rows)} frames")
        observed, rows, controls, poses = observed[:kept], rows[:kept], controls[:kept], poses[:kept]
        meta["ended_early"] = True
    has_poses = all(pose is not None for pose in poses)
    actions = np.stack(rows).astype(np.float32)
    meta.update(
        policy=getattr(policy, "name", type(policy).__name__),
        control_columns=list(world.control_columns),
        action_stats=action_statistics(actions, world.modality),
    )
    return Episode(
        frames=np.stack(observed),
        actions=actions,
        modality=world.modality,
        fps=world.fps,
        poses=np.stack(poses).astype(np.float64) if has_poses else None,
        intrinsics=world.intrinsics(),
        split=split,
        controls=np.stack(controls),
        meta=meta,
    )


def _record_seeds(config: RecordConfig, seeds: list[int], progress=None) -> list[tuple[int, dict, int]]:
    """Record and write the episodes of `seeds`; returns (seed, action stats, frames) per episode written."""
    world = make_world(config.world, size=config.size, **config.world_options)
    written = []
    try:
        for seed in seeds:
            policy = make_policy(config.world, seed)
            on_frame = None if progress is None else (lambda: progress.update(1))
            try:
                episode = record_episode(world, policy, seed, config.split, config.frames, on_frame)
            except EpisodeEnded as error:
                tqdm.write(f"skipped: {error}")
                continue
            # Only seeds without a complete episode get here: a folder without meta.json (a copy cut short) is redone.
            write_episode(config.out, episode_name(config.world, config.split, seed), episode, overwrite=True)
            written.append((seed, episode.meta["action_stats"], episode.num_frames))
    finally:
        world.close()
    return written


def _check_complete(config: RecordConfig, seeds: list[int]) -> None:
    """Complete episodes are kept, so they must match this run's size and frames (else the folder mixes them)."""
    for seed in seeds:
        path = config.out / episode_name(config.world, config.split, seed)
        meta = read_meta(path)
        cut_short = meta["meta"].get("ended_early") and meta["num_frames"] < config.frames
        if (meta["height"], meta["width"]) != (config.size, config.size) or not (
            meta["num_frames"] == config.frames or cut_short
        ):
            raise DataError(
                f"{path}: recorded at {meta['height']}x{meta['width']} with {meta['num_frames']} frames, not "
                f"--size {config.size} --frames {config.frames}; resume with the same options or use another --out"
            )


def record(config: RecordConfig) -> dict[str, Any]:
    """Record `config.episodes` episodes (seeds seed .. seed + episodes - 1), skipping complete ones.

    Returns a summary: episodes written and skipped, frames, frames/s, mean action statistics.
    """
    config.out.mkdir(parents=True, exist_ok=True)
    seeds = range(config.seed, config.seed + config.episodes)
    todo = [s for s in seeds if not (config.out / episode_name(config.world, config.split, s) / META_FILE).exists()]
    _check_complete(config, [s for s in seeds if s not in todo])
    start = time.perf_counter()
    written: list[tuple[int, dict, int]] = []
    with tqdm(total=len(todo) * config.frames, unit="frame", desc=f"record {config.world}") as progress:
        if config.workers == 1:
            written = _record_seeds(config, todo, progress)
        else:
            chunks = [todo[i :: config.workers] for i in range(config.workers) if todo[i :: config.workers]]
            with ProcessPoolExecutor(len(chunks), initializer=interrupt_on_terminate) as pool:
                futures = [pool.submit(_record_seeds, config, chunk) for chunk in chunks]
                try:
                    for future in as_completed(futures):
                        result = future.result()
                        written += result
                        progress.update(sum(frames for _, _, frames in result))
                except BaseException:  # stopped: each worker closes its simulator now, not after its whole share
                    for worker in multiprocessing.active_children():
                        worker.terminate()
                    raise
    seconds = time.perf_counter() - start
    frames = sum(count for _, _, count in written)
    stats = {}
    if written:
        names = written[0][1].keys()
        weights = np.array([count for _, _, count in written], dtype=np.float64)
        stats = {k: float(np.average([s[k] for _, s, _ in written], weights=weights)) for k in names}
    return {
        "written": len(written),
        "skipped_complete": config.episodes - len(todo),
        "failed": len(todo) - len(written),
        "frames": frames,
        "seconds": seconds,
        "frames_per_second": frames / seconds if seconds > 0 else 0.0,
        "action_stats": stats,
        "out": os.fspath(config.out),
    }
