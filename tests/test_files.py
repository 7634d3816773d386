import errno
import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import astra.files as files
from astra.files import atomic_path, atomic_write_text, remove_stale_temporaries, replace_folder, staging_folder


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


@pytest.mark.parametrize("exchange", [True, False], ids=["one-step swap", "rename aside"])
def test_replacing_a_folder_leaves_the_new_one_and_nothing_else(tmp_path, monkeypatch, exchange):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "weights").write_text("old")
    if not exchange:
        monkeypatch.setattr(files, "exchange_paths", lambda first, second: False)
    staged = staging_folder(final)
    (staged / "weights").write_text("new")
    replace_folder(staged, final)
    assert (final / "weights").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # neither the staged nor the previous folder is left


def test_the_one_step_swap_exchanges_two_folders_where_the_os_can(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "name").write_text(folder.name)
    if not files.exchange_paths(first, second):
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    assert (first / "name").read_text() == "b" and (second / "name").read_text() == "a"
    assert not files.exchange_paths(first, tmp_path / "missing")  # a vanished path: the caller looks again


def test_a_killed_writers_staging_folder_is_recognised_as_stale(tmp_path, monkeypatch):
    final = tmp_path / "ckpt"
    monkeypatch.setattr(files.os, "getpid", _dead_pid)
    staged = staging_folder(final)
    monkeypatch.undo()
    assert staged.name.startswith(".ckpt.tmp-") and staged.is_dir()
    assert remove_stale_temporaries(tmp_path, "ckpt") == [staged]


def _files_module_without_fcntl(monkeypatch, msvcrt):
    """A fresh copy of astra.files imported as on Windows: `import fcntl` fails, `msvcrt` is the given module."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # makes `import fcntl` raise ImportError
    monkeypatch.setitem(sys.modules, "msvcrt", msvcrt)
    spec = importlib.util.spec_from_file_location("astra_files_without_fcntl", files.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_fcntl_the_module_imports_and_locks_through_msvcrt(tmp_path, monkeypatch):
    calls = []

    def locking(descriptor, mode, count):
        calls.append((mode, count, os.lseek(descriptor, 0, os.SEEK_CUR)))
        if len(calls) == 1:  # LK_LOCK gave up after its ten tries: the lock must keep waiting, as flock does
            raise OSError(errno.EDEADLK, "Resource deadlock avoided")

    msvcrt = types.SimpleNamespace(LK_UNLCK=0, LK_LOCK=1, locking=locking)
    module = _files_module_without_fcntl(monkeypatch, msvcrt)
    assert module.fcntl is None
    with module.exclusive_lock(tmp_path / ".index.lock"):
        assert calls == [(msvcrt.LK_LOCK, 1, 0)] * 2
    assert calls[2:] == [(msvcrt.LK_UNLCK, 1, 0)]  # the same byte, from the start of the file


def test_without_any_lock_module_locking_says_so(tmp_path, monkeypatch):
    module = _files_module_without_fcntl(monkeypatch, msvcrt=None)  # None in sys.modules: its import fails too
    with pytest.raises(NotImplementedError, match="neither fcntl nor msvcrt"):
        with module.exclusive_lock(tmp_path / ".index.lock"):
            pass


def test_the_lock_excludes_another_holder_until_released(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    lock = tmp_path / ".index.lock"
    with open(lock, "a") as other:
        with files.exclusive_lock(lock):
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released on leaving the block


def test_an_output_file_that_cannot_be_written_is_named_up_front(tmp_path, monkeypatch):
    from astra.errors import AstraError
    from astra.files import check_output_file

    check_output_file(tmp_path / "new" / "deeper" / "video.mp4", "--out")  # missing folders are made later: fine
    (tmp_path / "a_file").write_text("keep")
    with pytest.raises(AstraError, match=r"--out .*a_file is a file, where a folder is needed"):
        check_output_file(tmp_path / "a_file" / "video.mp4", "--out")
    with pytest.raises(AstraError, match="is a folder; give a file name"):
        check_output_file(tmp_path, "--out")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("astra.files.tempfile.TemporaryFile", refuse)
    with pytest.raises(AstraError, match=r"--out .*: the folder .* is not writable"):
        check_output_file(tmp_path / "video.mp4", "--out")
