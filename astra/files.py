"""Atomic, durable writes: a reader, or a resumed run, finds the whole new file or the previous one, never half.

A file is written under a hidden temporary name in its own folder (`.<stem>.tmp-<pid><suffix>`, the suffix kept
for writers that choose a format by it), flushed to disk, renamed over the target, and the folder's entry is
flushed too, so neither a killed process nor a machine that loses power leaves a torn file behind. Writers of
whole folders (episodes, checkpoints) stage them the same way and call `fsync_tree` before their rename.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from astra.errors import AstraError

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


def replace_folder(staged: Path, final: Path, overwrite: bool = True, attempts: int = 5) -> None:
    """Flush the staged folder and rename it to `final`, replacing an existing one only if `overwrite`.

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
        previous = final.with_name(f".{final.name}.old-{os.getpid()}")
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
