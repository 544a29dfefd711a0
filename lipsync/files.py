"""Writing files and folders so that no reader ever sees half of one: ONE temp-name scheme for the project."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from lipsync.errors import UserError


def temp_path(path) -> Path:
    """Where `path` is written until it is complete: a hidden sibling that keeps the suffix, so a library that
    picks the format by it still can (`out/clip.mp4` -> `out/.clip.tmp.mp4`). Same folder: the rename is atomic."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def old_path(path) -> Path:
    """Where a folder being replaced waits while its successor moves in (`out/last.ckpt` -> `out/.last.old.ckpt`)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.old{path.suffix}")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield `temp_path(path)`; it becomes `path` if the block succeeds (`replace`) and is deleted otherwise. For
    a folder, an existing `path` is replaced as a whole."""
    path = Path(path)
    tmp = temp_path(path)
    recover(path)
    remove(tmp)  # a leftover of an interrupted run
    try:
        yield tmp
        replace(tmp, path)
    finally:
        remove(tmp)


def replace(new, path) -> None:
    """Move the complete file or folder `new` to `path`. A file replaces `path` in one atomic rename. A folder
    cannot (POSIX renames only onto an empty one): the previous `path` first steps aside to `old_path(path)`, then
    `new` moves in, then the previous one is deleted. A process killed at any point leaves a complete `path`, or,
    between the two renames, the previous one at old_path(path), which `recover` puts back."""
    new, path = Path(new), Path(path)
    if new.is_dir() and path.is_dir():
        old = old_path(path)
        remove(old)
        os.replace(path, old)
        os.replace(new, path)
        remove(old)
    else:
        os.replace(new, path)


def recover(path) -> Path:
    """Put back the previous version of `path` if a `replace` of it was interrupted between its two renames."""
    path, old = Path(path), old_path(path)
    if not path.exists() and old.exists():
        with contextlib.suppress(FileNotFoundError):  # another process of the run put it back first
            os.replace(old, path)
    return path


def remove(path) -> None:
    """Delete a file or a folder tree, if there is one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_writable_folder(folder, what: str) -> None:
    """UserError (starting with `what`) unless `folder` is, or can be created as, a folder this process may write
    in. Checked before long work starts: a bad output path then fails at once, not after the work."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:  # the deepest part of the path that exists
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what}: no permission to write in {existing}")


def walk(root) -> Iterator[tuple[Path, list[str]]]:
    """(folder, sorted file names) for every folder under `root`, in a fixed order, following symlinked folders
    (datasets are often assembled from links) and visiting each real folder once (no symlink cycles)."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        yield Path(folder), sorted(files)
