from pathlib import Path

import numpy as np
import pytest

from astra.actions.align import identity_action
from astra.cli import main
from astra.data.format import list_episodes, read_episode
from astra.worlds.base import World
from astra.worlds.doom import DoomWorld, make_policy
from astra.worlds.record import RecordConfig, action_statistics, record, record_episode


def test_record_writes_replayable_episodes_and_resumes(tmp_path):
    config = RecordConfig("doom", tmp_path, episodes=2, frames=9, seed=5, world_options={"maps": ["MAP01"]})
    summary = record(config)
    assert summary["written"] == 2 and summary["frames"] == 18 and summary["frames_per_second"] > 0
    paths = list_episodes(tmp_path)
    assert [p.name for p in paths] == ["doom-train-000005", "doom-train-000006"]
    episode = read_episode(paths[0])
    second_controls = read_episode(paths[1]).controls
    assert episode.frames.shape == (9, 64, 64, 3) and episode.actions.shape == (9, 8)
    assert episode.controls.shape == (9, 7) and episode.poses.shape == (9, 4, 4)
    np.testing.assert_array_equal(episode.actions[:, :7], episode.controls)
    assert episode.meta["policy"] == "doom-explorer" and episode.meta["map"] == "MAP01"
    assert set(episode.meta["action_stats"]) >= {"frac_forward", "mean_abs_mouse_dx"}

    # Replaying the stored controls from the same seed reproduces the stored frames (up to the lossless codec).
    world = DoomWorld(maps=["MAP01"])
    replay = [world.reset(5)] + [world.step(c) for c in episode.controls[:-1]]
    np.testing.assert_allclose(world.pose(), episode.poses[-1])
    world.close()
    assert np.abs(np.stack(replay).astype(int) - episode.frames).max() <= 2

    # Resuming skips the complete episodes and records only the new one.
    before = (paths[0] / "meta.json").stat().st_mtime_ns
    summary = record(RecordConfig("doom", tmp_path, episodes=3, frames=9, seed=5, world_options={"maps": ["MAP01"]}))
    assert summary["skipped_complete"] == 2 and summary["written"] == 1
    assert (paths[0] / "meta.json").stat().st_mtime_ns == before

    # An incomplete episode folder (no meta.json, e.g. an interrupted copy) is recorded again, not a crash.
    (paths[1] / "meta.json").unlink()
    summary = record(RecordConfig("doom", tmp_path, episodes=3, frames=9, seed=5, world_options={"maps": ["MAP01"]}))
    assert summary["skipped_complete"] == 2 and summary["written"] == 1
    np.testing.assert_array_equal(read_episode(paths[1]).controls, second_controls)


def test_cli_record_and_bad_arguments(tmp_path, capsys):
    code = main(["worlds", "record", "--world", "doom", "--episodes", "1", "--frames", "5", "--size", "32",
                 "--out", str(tmp_path), "--split", "heldout", "--maps", "MAP25"])
    assert code == 0
    assert "frames/s" in capsys.readouterr().out
    assert read_episode(tmp_path / "doom-heldout-000000").frames.shape == (5, 32, 32, 3)
    assert main(["worlds", "record", "--world", "doom", "--episodes", "1", "--out", str(tmp_path),
                 "--split", "train", "--maps", "MAP25"]) == 2  # a held-out map in the train split
    assert "no train maps" in capsys.readouterr().err
    # Resuming into the same folder with another --size would mix 32x32 and 64x64 episodes.
    assert main(["worlds", "record", "--world", "doom", "--episodes", "2", "--frames", "5", "--size", "64",
                 "--out", str(tmp_path), "--split", "heldout", "--maps", "MAP25"]) == 2
    assert "recorded at 32x32 with 5 frames, not --size 64 --frames 5" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["doom-heldout-000000"]
    with pytest.raises(ValueError, match="split"):
        RecordConfig("doom", tmp_path, episodes=1, split="val")
    # an episode is held in memory until written: 10^8 frames grew until the kernel killed the process
    with pytest.raises(ValueError, match=r"1144.4 GiB per episode, over the 2 GiB"):
        RecordConfig("doom", tmp_path, episodes=1, frames=10**8)
    with pytest.raises(ValueError, match="passes the largest seed"):
        RecordConfig("doom", tmp_path, episodes=2, seed=2**32 - 1)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    assert main(["worlds", "record", "--world", "doom", "--episodes", "1", "--frames", "5", "--size", "32",
                 "--out", str(a_file), "--split", "heldout", "--maps", "MAP25"]) == 2  # --out names a file
    assert "notes.txt" in capsys.readouterr().err and a_file.read_text() == "keep me"


class EndingWorld(World):
    """A stand-in simulator that ends its episode after 11 steps, like a Doom exit line."""

    name, modality, control_width, control_columns, fps = "ending", "keyboard_mouse", 7, tuple("abcdefg"), 10.0

    def reset(self, seed, split="train"):
        self.steps = 0
        return np.zeros((4, 4, 3), np.uint8)

    def step(self, control):
        from astra.worlds import EpisodeEnded

        self.steps += 1
        if self.steps > 11:
            raise EpisodeEnded("ended")
        self.row = np.concatenate([control, [0.0]]).astype(np.float32)
        return np.full((4, 4, 3), self.steps, np.uint8)

    def action_row(self):
        return self.row

    def still_control(self):
        return np.zeros(self.control_width, np.float32)


def test_episode_ended_early_is_cut_to_4k_plus_1():
    episode = record_episode(EndingWorld(), make_policy(0), seed=0, split="train", frames=33)
    assert episode.num_frames == 9 and episode.actions.shape == (9, 8) and episode.meta["ended_early"]
    assert episode.poses is None
    assert [int(f[0, 0, 0]) for f in episode.frames] == list(range(9))


def test_episode_ended_by_the_extra_step_keeps_every_frame():
    """11 steps give frames 0..11; the 12th step, taken only for the last frame's row, ends the episode."""
    episode = record_episode(EndingWorld(), make_policy(0), seed=0, split="train", frames=12)
    assert episode.num_frames == 12 and episode.actions.shape == (12, 8) and "ended_early" not in episode.meta
    assert [int(f[0, 0, 0]) for f in episode.frames] == list(range(12))
    np.testing.assert_array_equal(episode.actions[-1], identity_action("keyboard_mouse"))
    assert episode.controls.shape == (12, 7)


def test_action_statistics():
    rows = np.zeros((4, 8), np.float32)
    rows[:2, 0] = 1
    rows[1, 6] = -3.0
    stats = action_statistics(rows, "keyboard_mouse")
    assert stats["frac_forward"] == 0.5 and stats["frac_no_key"] == 0.5 and stats["mean_abs_mouse_dx"] == 0.75
    assert action_statistics(np.ones((3, 7)), "robot7")["mean_abs_gripper"] == 1.0


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the simulator's process through /proc")
def test_a_terminated_recorder_closes_its_simulator(tmp_path):
    """SIGTERM (`timeout`, `kill`) left ViZDoom running after the recorder died; it now unwinds like Ctrl+C."""
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "astra.cli", "worlds", "record", "--world", "doom", "--episodes", "1",
               "--frames", "100001", "--size", "32", "--out", str(tmp_path / "out")]  # fmt: skip
    recorder = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    children: set[str] = set()
    deadline = time.monotonic() + 60
    while not children and time.monotonic() < deadline and recorder.poll() is None:
        time.sleep(0.2)
        for task in Path(f"/proc/{recorder.pid}/task").glob("*/children"):
            children |= set(task.read_text().split())
    assert children, "the recorder never started its simulator"
    recorder.send_signal(signal.SIGTERM)
    _, error = recorder.communicate(timeout=30)
    assert recorder.returncode == 130 and "interrupted" in error
    time.sleep(0.5)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and _is_running(pid)]


def _is_running(pid: str) -> bool:
    """Alive and not a zombie waiting to be reaped (a closed simulator's process is reaped by its parent)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False
