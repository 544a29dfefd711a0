"""Writing a file so that no reader ever sees half of it (videos: video_io.VideoWriter does the same itself)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a hidden temp path next to `path` (`.name.tmp`, same folder, so the rename is atomic); it becomes
    `path` if the block succeeds and is deleted otherwise."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
