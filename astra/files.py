"""Atomic, durable writes: a reader, or a resumed run, finds the whole new file or the previous one, never half.

A file is written under a hidden temporary name in its own folder (`.<stem>.tmp-<pid><suffix>`, the suffix kept
for writers that choose a format by it), flushed to disk, renamed over the target, and the folder's entry is
flushed too, so neither a killed process nor a machine that loses power leaves a torn file behind. Writers of
whole folders (episodes, checkpoints) stage them the same way and call `fsync_tree` before their rename.
Writers that read, merge and rewrite one shared file (encode's index.json) take `exclusive_lock` around it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from astra.errors import AstraError

try:  # POSIX
    import fcntl
except ImportError:  # Windows: msvcrt instead
    fcntl = None
try:  # Windows
    import msvcrt
except ImportError:
    msvcrt = None

TEMPORARY_MARK = ".tmp-"  # hidden names `.<name>.tmp-<pid>...`: readers that list a folder skip them


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk (folders only where the OS can open them)."""
    is_folder = path.is_dir()
    if is_folder and not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if is_folder else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(directory: Path) -> None:
    """Flush every file under `directory`, then the folders themselves: before a staged folder is renamed in."""
    for folder, _, names in os.walk(directory):
        for name in names:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; when the block ends without error the file is flushed
    and renamed over `path`. On error, or if nothing was written, the temporary file is removed."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}{TEMPORARY_MARK}{os.getpid()}{path.suffix}")
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, path)
        fsync_path(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def staging_folder(final: Path) -> Path:
    """A new empty hidden folder beside `final` to stage its replacement in, named `.<name>.tmp-<pid>.<random>` so
    that `remove_stale_temporaries` recognises it once its writer is gone."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}{TEMPORARY_MARK}{os.getpid()}.", dir=final.parent))


@contextmanager
def staged_files(folder: Path, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a staging folder for the files of a run meant for `folder`; when the block ends without error each is
    renamed into `folder` (the names in `last` after the others: the index that points at them), so a run that fails
    midway leaves `folder` as it was instead of half old and half new files. Files only, no subfolders."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder)
    try:
        yield staging
        fsync_tree(staging)
        rank = {name: position + 1 for position, name in enumerate(last)}  # the others at 0, first
        for path in sorted(staging.iterdir(), key=lambda path: (rank.get(path.name, 0), path.name)):
            os.replace(path, folder / path.name)
        fsync_path(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


AT_FDCWD = -100  # Linux renameat2: paths relative to the working folder
RENAME_EXCHANGE = 2  # ... and swap the two names in one step


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`), so a reader of either name
    finds the old entry or the new one, never nothing. False where the OS or the filesystem cannot, or where either
    path has vanished; other failures raise OSError."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        return False
    result = renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.ENOENT):
        return False
    raise OSError(code, os.strerror(code), str(second))


def replace_folder(staged: Path, final: Path, overwrite: bool = True, attempts: int = 5) -> None:
    """Flush the staged folder and rename it to `final`, replacing an existing one only if `overwrite`.

    An existing `final` is swapped with the staged folder in one step where the OS can (then removed from the staged
    name); elsewhere it is renamed aside first, so a kill between the two renames leaves it under a temporary name.
    Another writer of the same folder (two recorders given the same seeds) may put or remove `final` between any
    two steps here; each step that fails that way looks again instead of failing with a bare OSError.
    """
    fsync_tree(staged)
    for _ in range(attempts):
        if not final.exists():
            try:
                os.replace(staged, final)
                fsync_path(final.parent)
                return
            except OSError:
                if not final.exists():
                    raise
        if not overwrite:
            raise FileExistsError(f"{final} already exists (pass overwrite=True to replace it)")
        if exchange_paths(staged, final):
            fsync_path(final.parent)
            shutil.rmtree(staged, ignore_errors=True)  # now the previous folder
            return
        previous = final.with_name(f".{final.name}{TEMPORARY_MARK}{os.getpid()}.old")
        try:
            os.replace(final, previous)
        except FileNotFoundError:
            continue  # the other writer moved it away: look again
        try:
            os.replace(staged, final)
        except OSError:
            if not final.exists():
                raise
            continue  # the other writer's copy went in first; ours replaces it on the next pass
        finally:
            shutil.rmtree(previous, ignore_errors=True)
        fsync_path(final.parent)
        return
    raise AstraError(f"{final} kept changing under another writer; {attempts} attempts to write it failed")


def check_output_file(path: Path, option: str) -> None:
    """Fail now, naming `option`, when `path` cannot become a file: a folder stands there, or a file stands where
    one of its folders should be (found before a long job, not when it writes its result)."""
    if path.is_dir():
        raise AstraError(f"{option} {path} is a folder; give a file name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AstraError(f"{option} {path}: {parent} is a file, where a folder is needed")
            try:  # a probe, not os.access: root passes that on read-only file systems such as /sys
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError:
                raise AstraError(f"{option} {path}: the folder {parent} is not writable") from None
            return


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def remove_stale_temporaries(folder: Path, name: str) -> list[Path]:
    """Remove the temporaries `.<name>.tmp-<pid>...` in `folder` left by writers that are no longer running (a
    SIGKILL skips their cleanup). A live process's temporary is left alone. Returns what was removed."""
    removed = []
    for candidate in folder.glob(f".{name}{TEMPORARY_MARK}*"):
        digits = candidate.name[len(name) + 1 + len(TEMPORARY_MARK) :].split(".")[0]
        if not digits.isdigit() or _process_alive(int(digits)):
            continue
        if candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


LOCKED_BYTES = 1  # msvcrt locks a byte range: the lock file's first byte stands for the whole file


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) while the block runs; blocks while another holder has
    it. flock where the OS has fcntl, msvcrt.locking on Windows, so that importing this module works on both."""
    with open(path, "a") as handle:
        _lock(handle, path)
        try:
            yield
        finally:
            _unlock(handle)


def _lock(handle, path: Path) -> None:
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_EX)
        return
    if msvcrt is None:
        raise NotImplementedError(f"{path}: cannot lock files on this OS (neither fcntl nor msvcrt)")
    while True:
        handle.seek(0)  # msvcrt locks from the current position
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, LOCKED_BYTES)
            return
        except OSError as error:  # LK_LOCK gives up after ten 1-second tries; flock would keep waiting, so do we
            if error.errno != errno.EDEADLK:
                raise


def _unlock(handle) -> None:
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, LOCKED_BYTES)
