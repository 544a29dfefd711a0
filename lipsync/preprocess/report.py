"""What happened to each item of a batch job (a video, a dataset folder): one Outcome each, and a summary with
one line per failure. A bad item never stops the batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from lipsync.errors import UserError


@dataclass
class Outcome:
    """What happened to one video (or dataset folder): status is "done", "skipped" or "failed"."""
    name: str  # path relative to the root it was found under
    status: str
    message: str = ""  # one line: why it failed, or a warning about a done one
    frames: int = 0  # 25-fps frames decoded (video stage)
    detect_s: float = 0.0  # seconds spent waiting for the boxes (probe, audio, first decode pass, detection)
    total_s: float = 0.0  # seconds of the worker's time


def attempt(name: str, work: Callable[[], Outcome]) -> Outcome:
    """Run `work`; any exception becomes a failed Outcome with a one-line message (the batch must go on)."""
    try:
        return work()
    except UserError as err:
        return Outcome(name, "failed", str(err).splitlines()[0])
    except Exception as err:  # noqa: BLE001 - a bad file must not stop a 50,000-video batch
        first_line = (str(err).splitlines() or [""])[0]
        return Outcome(name, "failed", f"{type(err).__name__}: {first_line}")


def summarize(outcomes: list[Outcome], noun: str) -> str:
    """Counts, throughput when frames were processed, then one line per warning and per failure."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    lines = [f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
             f"(of {len(outcomes)} {noun})"]
    frames = sum(o.frames for o in outcomes)
    seconds = sum(o.total_s for o in outcomes if o.status == "done")
    if frames and seconds:
        detect = sum(o.detect_s for o in outcomes if o.status == "done")
        lines[0] += (f"; {frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s per worker, "
                     f"waiting for detection {100 * detect / seconds:.0f} %)")
    lines += [f"  warning  {o.name}: {o.message}" for o in outcomes if o.status == "done" and o.message]
    lines += [f"  failed  {o.name}: {o.message}" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)
