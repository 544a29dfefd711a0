"""A corrupted copy of the demo's synthetic data, where what is wrong with each clip is known (the curation
experiment: bench/bench_curation.py, tests/test_curation.py).

Kinds of clip (each a synthetic person talking, lipsync.demo.synthetic; the truth goes to the clip's .json):
  clean    the mouth follows the clip's own speech
  shifted  the audio moved `offset` frames EARLIER (evaluation.sync.shift_audio: the expert should report `offset`)
  swapped  the audio track is another person's speech: the mouth follows speech that is not heard
  cut      person A for `cut` frames, then a hard cut to person B (each with their own speech)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lipsync import timing
from lipsync.demo import synthetic
from lipsync.evaluation.sync import shift_audio
from lipsync.video_writer import write_video


def _person(seed: int, index: int, seconds: float):
    rng = np.random.default_rng([seed, index])
    identity = synthetic.random_identity(rng)
    audio, opening = synthetic.synth_speech(seconds, rng)
    return identity, audio, opening


def _frames(identity, opening, size: int, t0: float = 0.0):
    return [synthetic.render_frame(identity, o, t0 + k / timing.VIDEO_FPS, size) for k, o in enumerate(opening)]


def make_corrupt_clip(path, kind: str, seed: int, index: int, seconds: float, size: int = 128, offset: int = 0,
                      cut: int | None = None) -> dict:
    """Write one clip of `kind` (see the module doc) to path (mp4 + .json truth) -> the truth."""
    path = Path(path)
    identity, audio, opening = _person(seed, index, seconds)
    truth = dict(kind=kind, seed=seed, index=index, offset=0, cut=None)
    if kind == "clean":
        frames = _frames(identity, opening, size)
    elif kind == "shifted":
        frames, audio = _frames(identity, opening, size), shift_audio(audio, offset)
        truth["offset"] = offset
    elif kind == "swapped":
        _, other, _ = _person(seed, index + 100_000, seconds)  # another person's speech, same length
        frames, audio = _frames(identity, opening, size), other[:len(audio)]
    elif kind == "cut":
        other_identity, other_audio, other_opening = _person(seed, index + 200_000, seconds)
        cut = len(opening) // 2 if cut is None else cut
        samples = round(cut * timing.AUDIO_SAMPLE_RATE / timing.VIDEO_FPS)
        frames = _frames(identity, opening[:cut], size) + _frames(other_identity, other_opening[cut:], size,
                                                                  cut / timing.VIDEO_FPS)
        audio = np.concatenate([audio[:samples], other_audio[samples:]])
        truth["cut"] = cut
    else:
        raise ValueError(f"unknown kind {kind!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(truth))
    write_video(path, frames, timing.VIDEO_FPS, audio=audio, preset=synthetic.CLIP_PRESET)  # encoded as the clean clips
    return truth


def corrupt_plan(count: int, seed: int, offsets=range(-6, 7), swapped: float = 0.15, cut: float = 0.15,
                 clean: float = 0.15) -> list[dict]:
    """`count` clip specs: fractions `swapped`, `cut` and `clean`, the rest shifted by offsets in turn (0 included
    when in `offsets`). Seeded and in a fixed order."""
    rng = np.random.default_rng([seed, 31337])
    n_swap, n_cut, n_clean = round(count * swapped), round(count * cut), round(count * clean)
    kinds = ["swapped"] * n_swap + ["cut"] * n_cut + ["clean"] * n_clean
    kinds += ["shifted"] * (count - len(kinds))
    kinds = [kinds[i] for i in rng.permutation(count)]
    offsets, specs, k = list(offsets), [], 0
    for i, kind in enumerate(kinds):
        spec = dict(kind=kind, index=i, offset=0)
        if kind == "shifted":
            spec["offset"] = offsets[k % len(offsets)]
            k += 1
        specs.append(spec)
    return specs


def corrupt_people(raw, people: list[int], seed: int, seconds: float, size: int, shifted: float, swapped: float,
                   cut: float, offsets=tuple(k for k in range(-6, 7) if k)) -> dict[str, dict]:
    """Replace the clips raw/id{i:03d}/clip00.mp4 of fractions of `people` with corrupted ones -> {clip: truth}.
    Shifted clips take `offsets` in turn; a cut falls at a random frame of the middle half of the clip."""
    rng = np.random.default_rng([seed, 4711])
    chosen = [int(i) for i in rng.permutation(people)]
    n_shift, n_swap, n_cut = (round(len(people) * f) for f in (shifted, swapped, cut))
    kinds = ["shifted"] * n_shift + ["swapped"] * n_swap + ["cut"] * n_cut
    frames = timing.num_video_frames(round(seconds * timing.AUDIO_SAMPLE_RATE))
    truths = {}
    for k, (i, kind) in enumerate(zip(chosen, kinds)):
        name = f"id{i:03d}/clip00"
        truths[name] = make_corrupt_clip(Path(raw) / f"{name}.mp4", kind, seed, i, seconds, size,
                                         offset=offsets[k % len(offsets)] if kind == "shifted" else 0,
                                         cut=int(rng.integers(frames // 4, 3 * frames // 4)))
    return truths
