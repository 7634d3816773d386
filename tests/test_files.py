import subprocess
import sys

import numpy as np
import pytest

from astra.files import atomic_path, atomic_write_text, remove_stale_temporaries


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "index.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_the_temporary_keeps_the_suffix_writers_pick_a_format_by(tmp_path):
    with atomic_path(tmp_path / "clip.gif") as temporary:
        assert temporary.suffix == ".gif" and temporary.name.startswith(".")
        temporary.write_bytes(b"GIF89a")
    assert (tmp_path / "clip.gif").read_bytes() == b"GIF89a"


def test_only_a_dead_writers_temporaries_are_removed(tmp_path):
    import os

    dead, alive = tmp_path / f".ep0.tmp-{_dead_pid()}", tmp_path / f".ep0.tmp-{os.getpid()}"
    other = tmp_path / f".ep1.tmp-{_dead_pid()}"
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "actions.npy").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path, "ep0") == [dead]
    assert not dead.exists() and alive.exists() and other.exists()


def test_writing_an_episode_clears_what_a_killed_writer_of_it_left(tmp_path):
    from astra.data.format import Episode, list_episodes, write_episode

    leftover = tmp_path / f".ep0.tmp-{_dead_pid()}"
    leftover.mkdir()
    (leftover / "meta.json").write_text("{}")
    frames = np.zeros((5, 16, 16, 3), dtype=np.uint8)
    write_episode(tmp_path, "ep0", Episode(frames, np.zeros((5, 8), dtype=np.float32), "keyboard_mouse", fps=10.0))
    assert not leftover.exists()
    assert list_episodes(tmp_path) == [tmp_path / "ep0"]
