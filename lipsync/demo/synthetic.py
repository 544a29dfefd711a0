"""Procedural talking faces whose lip sync can be measured.

A clip is speech-like audio (voiced syllables, fricatives, pauses) and a frontal cartoon-realistic face whose
mouth opening follows the syllable envelope of that audio. The true opening of every frame is known and
`measure_mouth_opening` reads it back from pixels, so the lip sync of a generated video is a number (Pearson
correlation of the measured opening with the opening its driving audio implies), not an impression.

Geometry is relative to the head ellipse (centre cx, cy; semi-axes ax, ay; image y points down); identity
lengths are fractions of the frame size, so any `size` renders the same picture.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import multiprocessing
from pathlib import Path

import cv2
import numpy as np

from lipsync import timing
from lipsync.video_writer import write_video

SR = timing.AUDIO_SAMPLE_RATE
# x264 preset of the rendered clips: "veryfast" encodes 128 px frames in 60 % of "medium"'s time; at CRF 18
# the difference is in the file size, not in what preprocessing sees.
CLIP_PRESET = "veryfast"

# ----------------------------------------------------------------------------------------------- speech

# (formants F1-F3 in Hz of an adult male voice, peak mouth opening); open vowels are also the louder ones.
VOWELS = (
    ((730, 1090, 2440), 1.00),  # a  (father)
    ((660, 1720, 2410), 0.85),  # ae (cat)
    ((640, 1190, 2390), 0.75),  # uh (cut)
    ((570, 840, 2410), 0.65),  # o  (caught)
    ((530, 1840, 2480), 0.60),  # e  (bet)
    ((390, 1990, 2550), 0.45),  # I  (bit)
    ((300, 870, 2240), 0.30),  # u  (boot)
    ((270, 2290, 3010), 0.30),  # i  (beet)
)
FORMANT_BANDWIDTHS = np.array([80.0, 100.0, 150.0])  # Hz
MAX_HARMONIC_HZ = 5000.0


def _syllable_spans(duration_s: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(start_s, length_s) per syllable: phrases of 3-12 syllables at 3-7 per second, 0.2-0.8 s pauses between."""
    spans, t = [], rng.uniform(0.1, 0.5)
    while True:
        rate = rng.uniform(3.0, 7.0)
        for _ in range(int(rng.integers(3, 13))):
            length = rng.uniform(0.8, 1.25) / rate
            if t + length > duration_s - 0.05:
                return spans
            spans.append((t, length))
            t += length
        t += rng.uniform(0.2, 0.8)


def _voiced_carrier(f0: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """Unit-RMS vowel sound: f0 [n] Hz, formants [n, 3] Hz -> [n].

    A sawtooth (glottal source: harmonic k has amplitude 1/k) through three cascaded formant resonators, built
    additively: harmonic k gets the resonators' magnitude |H(k f0)| at its own frequency, so pitch and formants
    can change every sample without filter state. Normalised by the harmonics' total power so loudness is set
    only by the envelope, not by pitch or vowel.
    """
    phase = 2 * np.pi * np.cumsum(f0) / SR
    out, power = np.zeros_like(f0), np.zeros_like(f0)
    f2, b = formants ** 2, FORMANT_BANDWIDTHS
    for k in range(1, int(MAX_HARMONIC_HZ // f0.min()) + 1):
        fk = (k * f0)[:, None]
        gain = np.prod(f2 / np.sqrt((f2 - fk ** 2) ** 2 + (b * fk) ** 2), axis=1) / k * (fk[:, 0] < MAX_HARMONIC_HZ)
        out += gain * np.sin(k * phase)
        power += gain ** 2 / 2
    return out / np.sqrt(power)


def frame_means(per_sample: np.ndarray, num_samples: int, fps: float = timing.VIDEO_FPS) -> np.ndarray:
    """Mean of a per-sample signal [S] over each video frame's span [k / fps, (k + 1) / fps) -> [num_frames].

    num_frames = timing.num_video_frames(S, fps); the last frame's span may run past the audio (zero-padded).
    """
    num_frames = timing.num_video_frames(num_samples, fps)
    edges = np.round(np.arange(num_frames + 1) * SR / fps).astype(np.int64)
    padded = np.concatenate([per_sample, np.zeros(max(0, edges[-1] - len(per_sample)))])
    return np.add.reduceat(padded, edges[:-1])[:num_frames] / np.diff(edges)


def synth_speech(duration_s: float, rng: np.random.Generator, fps: float = timing.VIDEO_FPS):
    """Speech-like audio and the mouth opening it implies.

    Returns audio float32 [S] (S = round(duration_s * 16 kHz), peak 0.5-0.9) and opening float32 [num frames
    at fps, timing.num_video_frames(S, fps)] in [0, 1].

    A syllable is an optional fricative onset (high-passed noise, mouth nearly shut) and a vowel: the speaker's
    pitch (95-200 Hz, gliding within the syllable, kept in 80-250 Hz) through the vowel's formants (scaled per
    speaker for vocal-tract length) under an attack / plateau / decay envelope that returns to 0 before the next
    syllable. The mouth opening is that envelope times the vowel's openness, averaged over the frame's span:
    it is a function of the audio's loudness and formants around the frame, hence predictable from an audio
    window, and exactly 0 in pauses.
    """
    n = int(round(duration_s * SR))
    f0_base, formant_scale = rng.uniform(95, 200), rng.uniform(0.9, 1.15)
    envelope, loudness, opening = np.zeros(n), np.zeros(n), np.zeros(n)
    fricative = np.zeros(n)
    f0 = np.full(n, f0_base)
    formants = np.zeros((n, 3))
    for start, length in _syllable_spans(duration_s, rng):
        a, b = int(start * SR), int((start + length) * SR)
        u = np.linspace(0.0, 1.0, b - a, endpoint=False)  # position in the syllable
        vowel, openness = VOWELS[rng.integers(len(VOWELS))]
        onset = rng.uniform(0.15, 0.3) if rng.random() < 0.4 else 0.0  # fricative share of the syllable
        v = (u - onset) / (0.9 - onset)  # position in the vowel; the last 10 % is the closure
        attack, decay, stress = rng.uniform(0.15, 0.3), rng.uniform(0.25, 0.4), rng.uniform(0.6, 1.0)
        shape = np.sin(np.pi / 2 * np.clip(np.minimum(v / attack, (1 - v) / decay), 0, 1)) ** 2
        envelope[a:b] = stress * shape
        opening[a:b] = stress * openness * shape
        loudness[a:b] = 0.15 + 0.85 * openness  # open vowels are louder: the loudness tracks the opening
        f0[a:b] = np.clip(f0_base * (rng.uniform(0.9, 1.15) + rng.uniform(-0.15, 0.1) * u), 80, 250)
        formants[a:b] = np.array(vowel) * formant_scale
        fricative[a:b] = stress * np.sin(np.pi * np.clip(u / onset, 0, 1)) if onset else 0.0
    voiced = envelope > 0
    audio = np.zeros(n)
    if voiced.any():
        audio[voiced] = envelope[voiced] * loudness[voiced] * _voiced_carrier(f0[voiced], formants[voiced])
    hiss = np.diff(rng.standard_normal(n + 1)) / np.sqrt(2)  # white noise, high-passed: fricative / breath
    audio += (0.25 * fricative + 0.03 * envelope) * hiss + 3e-4 * rng.standard_normal(n)  # + room noise
    audio *= rng.uniform(0.5, 0.9) / max(np.abs(audio).max(), 1e-6)
    return audio.astype(np.float32), frame_means(opening, n, fps).astype(np.float32)


# ------------------------------------------------------------------------------------------------- faces

SKIN_TONES = ((255, 224, 196), (241, 194, 167), (234, 192, 134), (224, 172, 105), (198, 134, 66),
              (161, 102, 60), (141, 85, 36), (110, 70, 45))
HAIR_COLOURS = ((20, 16, 14), (55, 38, 25), (105, 68, 40), (165, 115, 60), (215, 180, 115), (145, 60, 30),
                (125, 122, 118))
IRIS_COLOURS = ((70, 45, 25), (110, 75, 40), (60, 100, 150), (80, 120, 80), (100, 110, 120))
# forehead: ellipse (dx, dy, half-width, half-height; in ax / ay) of skin cut out of the hair cap, i.e. the
# hairline; cap: the cap's size relative to the head; back: hair behind the head (dy, half-width, half-height).
HAIR_STYLES = {
    "short": dict(forehead=(0.0, 0.10, 0.92, 0.62), cap=1.05, back=None),
    "long": dict(forehead=(0.0, 0.16, 0.90, 0.70), cap=1.07, back=(0.2, 1.22, 1.15)),
    "buzz": dict(forehead=(0.0, 0.08, 0.95, 0.66), cap=1.01, back=None),
    "side_part": dict(forehead=(0.16, 0.12, 0.9, 0.62), cap=1.08, back=None),
    "curly": dict(forehead=(0.0, 0.12, 0.90, 0.60), cap=1.12, back=(-0.25, 1.4, 0.95)),
}
EYE_Y, BROW_Y, NOSTRIL_Y, MOUTH_Y = -0.07, -0.30, 0.30, 0.52  # in ay below the head centre
MAX_OPEN = 0.28  # mouth interior height at opening 1, in ay
MOUTH_INTERIOR = (30, 8, 12)  # RGB; near black for every identity so darkness means "open mouth"
# Part of the face box (x1, x2, y1, y2 as fractions) that holds the mouth at any opening and only skin around it.
MOUTH_REGION = (0.30, 0.70, 0.68, 0.93)


@dataclasses.dataclass(frozen=True)
class Identity:
    """One synthetic person. Colours are RGB 0-255; lengths are fractions of the frame size."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lips: tuple[float, float, float]
    shirt: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]  # top and bottom of a gradient
    hair_style: str  # key of HAIR_STYLES
    face_height: float  # head ellipse height / frame height (0.45-0.65)
    aspect: float  # head ellipse width / height
    center: tuple[float, float]  # head centre (x, y) at rest
    eye_spacing: float  # eye centre offset from the midline, in ax
    mouth_width: float  # mouth corner offset from the midline, in ax
    light: float  # in [-1, 1]: > 0 lights the face from the image's left, its right side is darker
    sway: float  # horizontal head motion amplitude
    bob: float  # vertical head motion amplitude
    motion_freq: tuple[float, float]  # Hz of sway and bob
    motion_phase: tuple[float, float]  # rad


def _rgb(colour) -> tuple[float, float, float]:
    """Any RGB array-like -> a tuple of plain floats (hashable, JSON-able)."""
    return tuple(np.round(np.asarray(colour, float), 1).tolist())


def _colour(rng, palette, jitter=0.06) -> tuple[float, float, float]:
    """A palette entry, each channel scaled by 1 +- jitter."""
    base = np.array(palette[rng.integers(len(palette))], dtype=float)
    return _rgb(np.clip(base * rng.uniform(1 - jitter, 1 + jitter, 3), 0, 255))


def random_identity(rng: np.random.Generator) -> Identity:
    """A random person: skin tone, hair colour and style, eyes, lips, clothes, background, face size and place."""
    skin = _colour(rng, SKIN_TONES)
    lips = np.array(skin) * (1.0, 0.72, 0.75) * rng.uniform(0.75, 0.9)  # redder and darker than the skin
    hsv = np.uint8([[[rng.integers(180), rng.integers(40, 200), rng.integers(50, 230)]]])
    top = rng.uniform(40, 225, 3)
    face_height = rng.uniform(0.45, 0.65)
    return Identity(
        skin=skin, hair=_colour(rng, HAIR_COLOURS, 0.1), iris=_colour(rng, IRIS_COLOURS, 0.1), lips=_rgb(lips),
        shirt=_rgb(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]),
        background=(_rgb(top), _rgb(top * rng.uniform(0.6, 0.95))),
        hair_style=str(rng.choice(list(HAIR_STYLES))), face_height=face_height, aspect=rng.uniform(0.72, 0.82),
        center=(0.5 + rng.uniform(-0.05, 0.05), 0.52 + rng.uniform(-0.02, 0.04) + (0.65 - face_height) * 0.15),
        eye_spacing=rng.uniform(0.36, 0.42), mouth_width=rng.uniform(0.30, 0.36), light=rng.uniform(-1, 1),
        sway=rng.uniform(0.008, 0.02), bob=rng.uniform(0.005, 0.012),
        motion_freq=tuple(rng.uniform(0.15, 0.5, 2).tolist()),
        motion_phase=tuple(rng.uniform(0, 2 * np.pi, 2).tolist()),
    )


def _wobble(t: float, freq: float, phase: float, ratio: float) -> float:
    """Smooth motion in [-1, 1]: two sines at incommensurate frequencies, so it never looks periodic."""
    return 0.7 * math.sin(2 * math.pi * freq * t + phase) + 0.3 * math.sin(2 * math.pi * ratio * freq * t + 2 * phase)


def _head(identity: Identity, t: float, size: int) -> tuple[float, float, float, float]:
    """Head ellipse (cx, cy, ax, ay) in pixels at time t: the rest position plus a smooth sway and bob."""
    (fs, fb), (ps, pb) = identity.motion_freq, identity.motion_phase
    cx = (identity.center[0] + identity.sway * _wobble(t, fs, ps, 2.3)) * size
    cy = (identity.center[1] + identity.bob * _wobble(t, fb, pb, 1.7)) * size
    ay = identity.face_height * size / 2
    return cx, cy, ay * identity.aspect, ay


def face_box(identity: Identity, t: float, size: int) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) in pixels of the head ellipse at time t (moves with the head, not with the mouth)."""
    cx, cy, ax, ay = _head(identity, t, size)
    return cx - ax, cy - ay, cx + ax, cy + ay


_SHIFT = 4  # cv2 fixed-point bits: sub-pixel positions, so slow head motion is smooth, not 1-px steps


def _fix(*values: float) -> tuple[int, ...]:
    return tuple(int(round(v * (1 << _SHIFT))) for v in values)


def _ellipse(img, centre, axes, colour, thickness=-1, start=0, end=360):
    cv2.ellipse(img, _fix(*centre), _fix(*axes), 0, start, end, colour, thickness, cv2.LINE_AA, _SHIFT)


def _poly(img, points, colour):
    cv2.fillPoly(img, [np.round(np.asarray(points) * (1 << _SHIFT)).astype(np.int32)], colour, cv2.LINE_AA, _SHIFT)


def _shade(colour, factor):
    return tuple(min(255.0, c * factor) for c in colour)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _draw_mouth(img, identity: Identity, opening: float, cx: float, my: float, ax: float, ay: float):
    """Lips around a near-black interior whose height is opening * MAX_OPEN * ay (area linear in opening).

    The upper lip rises by a quarter of the opening and the lower lip (jaw) drops by three quarters; lip areas do
    not change. At opening 0 the interior polygon degenerates to an anti-aliased line: the seam of closed lips.
    """
    mw, h = identity.mouth_width * ax, float(np.clip(opening, 0, 1)) * MAX_OPEN * ay
    u = np.linspace(-1, 1, 33)
    s = np.sqrt(1 - u ** 2)
    x = cx + mw * u
    upper_in, lower_in = my - 0.25 * h * s, my + 0.75 * h * s
    bow = 1 - 0.3 * np.exp(-(u / 0.18) ** 2)  # cupid's bow: a dip of the upper lip's outline at the middle
    upper_out = upper_in - 0.055 * ay * s ** 0.7 * bow
    lower_out = lower_in + 0.075 * ay * s ** 0.8
    _poly(img, np.concatenate([np.stack([x, upper_out], 1), np.stack([x, upper_in], 1)[::-1]]), identity.lips)
    _poly(img, np.concatenate([np.stack([x, lower_in], 1), np.stack([x, lower_out], 1)[::-1]]),
          _shade(identity.lips, 1.08))
    _poly(img, np.concatenate([np.stack([x, upper_in], 1), np.stack([x, lower_in], 1)[::-1]]), MOUTH_INTERIOR)


def render_frame(identity: Identity, opening: float, t: float, size: int) -> np.ndarray:
    """The face at time t with mouth opening in [0, 1] -> RGB uint8 [size, size, 3].

    Layers back to front: background gradient, hair behind the head, shoulders and neck, ears, head and hair cap
    (shaded together: darker towards the rim, lit from one side), eyebrows, eyes, nose, mouth.
    """
    cx, cy, ax, ay = _head(identity, t, size)
    skin, style = identity.skin, HAIR_STYLES[identity.hair_style]
    top, bottom = (np.array(c, np.float32) for c in identity.background)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = np.ascontiguousarray(np.broadcast_to(top + (bottom - top) * ramp, (size, size, 3)).astype(np.uint8))
    if style["back"]:
        dy, w, h = style["back"]
        _ellipse(img, (cx, cy + dy * ay), (w * ax, h * ay), _shade(identity.hair, 0.85))
    _ellipse(img, (cx, cy + 1.8 * ay), (2.1 * ax, 0.85 * ay), identity.shirt)
    _poly(img, [(cx - 0.42 * ax, cy + 0.3 * ay), (cx + 0.42 * ax, cy + 0.3 * ay),
                (cx + 0.46 * ax, cy + 1.25 * ay), (cx - 0.46 * ax, cy + 1.25 * ay)], _shade(skin, 0.72))
    for side in (-1, 1):
        _ellipse(img, (cx + side * 0.97 * ax, cy + 0.02 * ay), (0.13 * ax, 0.2 * ay), _shade(skin, 0.85))
        _ellipse(img, (cx + side * 0.98 * ax, cy + 0.03 * ay), (0.06 * ax, 0.11 * ay), _shade(skin, 0.7))

    # Head (slightly narrower at the chin) and hair cap, then shading through their joint mask.
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    chin = 1 - 0.12 * np.clip(np.sin(theta), 0, None) ** 2
    outline = np.stack([cx + ax * np.cos(theta) * chin, cy + ay * np.sin(theta)], 1)
    cap_axes = (style["cap"] * ax, style["cap"] * ay)
    mask = np.zeros((size, size), np.uint8)
    _poly(mask, outline, 255)
    _ellipse(mask, (cx, cy), cap_axes, 255, start=180, end=360)
    _poly(img, outline, skin)
    stubble = identity.hair_style == "buzz"  # skin shows through
    _ellipse(img, (cx, cy), cap_axes, _rgb((np.array(identity.hair) + skin) / 2) if stubble else identity.hair,
             start=180, end=360)
    fx, fy, fw, fh = style["forehead"]
    _ellipse(img, (cx + fx * ax, cy + fy * ay), (fw * ax, fh * ay), skin, start=180, end=360)
    gy, gx = _grid(size)
    nx, ny = (gx - cx) / ax, (gy - cy) / ay
    shade = np.clip(1.06 - 0.3 * (nx ** 2 + ny ** 2) ** 2 - 0.12 * identity.light * nx, 0.45, 1.1)
    m = mask.astype(np.float32) / 255
    img = np.clip(img * (1 - m * (1 - shade))[..., None], 0, 255).astype(np.uint8)

    brow_t = max(1, round(0.05 * ay))
    for side in (-1, 1):
        ex, ey = cx + side * identity.eye_spacing * ax, cy + EYE_Y * ay
        _ellipse(img, (ex, cy + BROW_Y * ay), (0.2 * ax, 0.07 * ay), _shade(identity.hair, 0.7), brow_t, 200, 340)
        _ellipse(img, (ex, ey + 0.01 * ay), (0.24 * ax, 0.1 * ay), _shade(skin, 0.85))  # eye socket
        _ellipse(img, (ex, ey), (0.17 * ax, 0.07 * ay), (236, 232, 226))
        _ellipse(img, (ex, ey), (0.064 * ay, 0.064 * ay), identity.iris)
        _ellipse(img, (ex, ey), (0.03 * ay, 0.03 * ay), (15, 12, 12))
        _ellipse(img, (ex + 0.02 * ax, ey - 0.022 * ay), (0.012 * ay, 0.012 * ay), (250, 250, 250))
        _ellipse(img, (ex, ey), (0.17 * ax, 0.07 * ay), (45, 32, 30), max(1, round(0.025 * ay)), 190, 350)
        _ellipse(img, (cx + side * 0.075 * ax, cy + NOSTRIL_Y * ay), (0.045 * ax, 0.02 * ay), _shade(skin, 0.45))
    side = 1 if identity.light > 0 else -1  # the nose's shadow falls on the side away from the light
    cv2.line(img, _fix(cx + side * 0.07 * ax, cy - 0.05 * ay), _fix(cx + side * 0.11 * ax, cy + 0.24 * ay),
             _shade(skin, 0.8), max(1, round(0.03 * ay)), cv2.LINE_AA, _SHIFT)
    _ellipse(img, (cx, cy + (NOSTRIL_Y - 0.05) * ay), (0.11 * ax, 0.05 * ay), _shade(skin, 1.04))  # nose tip
    _draw_mouth(img, identity, opening, cx, cy + MOUTH_Y * ay, ax, ay)
    return img


# ------------------------------------------------------------------------------------------- measurement

FULL_OPEN_AREA = MAX_OPEN * 0.33 * math.pi / 2 / 4  # interior area / face box area at opening 1 (mean mouth)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # RGB -> luma (BT.601)


def measure_mouth_opening(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mouth opening measured from pixels: frames [N, H, W, 3] uint8 RGB, boxes [N, 4] (x1, y1, x2, y2) -> [N].

    In MOUTH_REGION of each face box a pixel's darkness is linear in its luma: 0 at the region's median (skin),
    1 at the mouth interior's luma. Summed over the region, divided by the box area (scale-invariant) and by
    FULL_OPEN_AREA, it is the interior's area in units of a fully open mouth plus a constant per face (the lips
    and the closed seam). Because darkness is LINEAR in the colour, blur, compression and a latent autoencoder
    move dark mass around without changing the sum; a threshold would not (it loses the anti-aliased and
    blurred rim, a large share of a small mouth). Slope ~0.8-0.95 and offset ~0.3-0.6 vary with the face, so
    compare within one face: Pearson correlation with the true opening over a clip. `boxes` are the clip's json
    boxes (a detector's boxes work too: the region has margin for a few % of jitter).
    """
    x1f, x2f, y1f, y2f = MOUTH_REGION
    interior_luma = float(np.dot(MOUTH_INTERIOR, LUMA))
    out = np.zeros(len(frames), np.float32)
    for i, (frame, (x1, y1, x2, y2)) in enumerate(zip(frames, np.asarray(boxes, float))):
        w, h = x2 - x1, y2 - y1
        region = frame[max(0, round(y1 + y1f * h)):max(0, round(y1 + y2f * h)),
                       max(0, round(x1 + x1f * w)):max(0, round(x1 + x2f * w))]
        if region.size == 0:
            continue
        luma = region.astype(np.float32) @ LUMA
        skin = float(np.median(luma))
        darkness = np.clip((skin - luma) / max(skin - interior_luma, 1.0), 0, 1)
        out[i] = darkness.sum() / (w * h) / FULL_OPEN_AREA
    return out


# ------------------------------------------------------------------------------------------------- clips

def make_clip(path, identity: Identity, duration_s: float, rng: np.random.Generator | None, size: int = 160,
              fps: float = timing.VIDEO_FPS, audio: np.ndarray | None = None, opening: np.ndarray | None = None,
              meta: dict | None = None) -> Path:
    """Render a talking clip to `path` (H.264 + AAC mp4) and its ground truth to path.with_suffix(".json").

    Speech of `duration_s` is synthesised from `rng`, unless `audio` [S] (16 kHz) and `opening`
    [num_video_frames(S, fps)] are given together: then the mouth follows that opening and the audio track is
    that audio (e.g. a face video whose mouth follows other speech than the one that will drive it), and
    duration_s and rng are unused. The json (written first, so an mp4 always has one) holds fps, size, sample
    rate, the true per-frame opening, the per-frame face boxes, the identity and `meta` (e.g. seeds).
    """
    path = Path(path)
    if (audio is None) != (opening is None):
        raise ValueError("pass audio and opening together (or neither)")
    if audio is None:
        audio, opening = synth_speech(duration_s, rng, fps)
    num_frames = timing.num_video_frames(len(audio), fps)
    if len(opening) != num_frames:
        raise ValueError(f"opening has {len(opening)} frames, the audio needs {num_frames} at {fps} fps")
    times = np.arange(num_frames) / fps
    truth = dict(fps=fps, size=size, sample_rate=SR, num_frames=num_frames, num_samples=len(audio),
                 opening=np.round(np.asarray(opening, float), 5).tolist(),
                 boxes=[np.round(face_box(identity, t, size), 3).tolist() for t in times],
                 identity=dataclasses.asdict(identity), **(meta or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(truth))
    write_video(path, (render_frame(identity, o, t, size) for o, t in zip(opening, times)), fps,
                audio=audio, audio_rate=SR, preset=CLIP_PRESET)
    return path


def make_dataset(root, num_identities: int, clips_per_identity: int, clip_seconds: float, seed: int,
                 size: int = 160, workers: int = 1) -> list[Path]:
    """Raw video tree root/id{i:03d}/clip{j:02d}.mp4 (+ .json) -> the mp4 paths.

    Identity i draws from default_rng([seed, i]) and its clip j from default_rng([seed, i, j]), so a clip
    depends only on (seed, i, j): the same seed gives the same frames and audio, whatever the counts, and
    `workers` processes render the same files as one.
    """
    jobs = [(Path(root), i, j, clip_seconds, seed, size) for i in range(num_identities)
            for j in range(clips_per_identity)]
    if workers <= 1:
        return [_make_dataset_clip(*job) for job in jobs]
    # spawn: the caller may hold threads (torch, OpenCV) that a forked child would inherit mid-lock
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_make_dataset_clip, *zip(*jobs), chunksize=8))


def _make_dataset_clip(root: Path, i: int, j: int, clip_seconds: float, seed: int, size: int) -> Path:
    identity = random_identity(np.random.default_rng([seed, i]))
    return make_clip(root / f"id{i:03d}" / f"clip{j:02d}.mp4", identity, clip_seconds,
                     np.random.default_rng([seed, i, j]), size, meta=dict(seed=seed, identity_index=i, clip_index=j))
