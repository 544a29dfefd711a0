"""THE timer of the project: wall seconds per named stage (inference's per-stage table, the demo's stages,
preprocessing's per-video times) and laps (the wall time of consecutive steps of one run)."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator


class Stopwatch:
    """Seconds and item counts per stage; a stage nested in another is not counted in its parent's time.

    sync: called at every stage boundary (torch.cuda.synchronize on a GPU, so each stage is charged for its own
    kernels); log: called with a line when a stage starts and ends (the demo's progress lines)."""

    def __init__(self, sync: Callable[[], None] | None = None, log: Callable[[str], None] | None = None):
        self._sync = sync or (lambda: None)
        self._log = log
        self.seconds: dict[str, float] = defaultdict(float)
        self.items: dict[str, int] = defaultdict(int)
        self.laps: dict[str, float] = {}  # wall seconds of each step, in order
        self.started = self._last_lap = time.perf_counter()
        self._child_seconds: list[float] = []  # per open stage: time spent in stages nested inside it

    @contextmanager
    def stage(self, name: str, items: int = 0):
        if self._log:
            self._log(f"[{name}] ...")
        self._sync()
        start = time.perf_counter()
        self._child_seconds.append(0.0)
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - start
            self.seconds[name] += elapsed - self._child_seconds.pop()
            self.items[name] += items
            if self._child_seconds:
                self._child_seconds[-1] += elapsed
        if self._log:
            self._log(f"[{name}] {elapsed:.1f} s")

    def iterate(self, name: str, items: Iterable) -> Iterator:
        """Charge the time spent producing each item of `items` (e.g. decoding a frame) to stage `name`."""
        items = iter(items)
        while True:
            with self.stage(name):
                item = next(items, None)
            if item is None:
                return
            self.items[name] += 1
            yield item

    def merge(self, other: "Stopwatch") -> None:
        """Add another thread's stage times (stages of different threads overlap in wall time)."""
        for name, seconds in other.seconds.items():
            self.seconds[name] += seconds
            self.items[name] += other.items[name]

    def lap(self, name: str) -> float:
        """Record the wall time since the previous lap (or the start) as step `name`; returns it."""
        now = time.perf_counter()
        self.laps[name] = round(now - self._last_lap, 3)
        self._last_lap = now
        return self.laps[name]

    @property
    def total(self) -> float:
        """Wall seconds since the stopwatch was made."""
        return time.perf_counter() - self.started

    def summary(self, order: Iterable[str] | None = None) -> dict:
        """{stage: {seconds, frames, fps}} in `order` (default: first use)."""
        names = [name for name in order if name in self.seconds] if order is not None else list(self.seconds)
        return {name: {"seconds": round(self.seconds[name], 3), "frames": self.items[name],
                       "fps": round(self.items[name] / self.seconds[name], 1) if self.seconds[name] > 0 else None}
                for name in names}
