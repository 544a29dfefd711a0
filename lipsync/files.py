"""Writing files and folders so that no reader ever sees half of one: ONE temp-name scheme for the project."""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def temp_path(path) -> Path:
    """Where `path` is written until it is complete: a hidden sibling that keeps the suffix, so a library that
    picks the format by it still can (`out/clip.mp4` -> `out/.clip.tmp.mp4`). Same folder: the rename is atomic."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield `temp_path(path)`; it becomes `path` if the block succeeds and is deleted otherwise. For a folder,
    an existing `path` is replaced as a whole."""
    path = Path(path)
    tmp = temp_path(path)
    _remove(tmp)  # a leftover of an interrupted run
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            _remove(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
