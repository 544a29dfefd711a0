"""Streaming: speech chunks -> Wav2Vec2 features over a sliding window -> frame jobs -> faces, batched on the device.

A stream cannot know the future, but Wav2Vec2's features at time t depend on the whole clip (a transformer with a
convolutional position embedding, on audio normalised over the clip). So StreamingFeatures encodes the feature
frames of each 40 ms step from a window of audio that reaches `left_context_s` back and `right_context_s` ahead
of them (the right context is latency the stream adds), normalised by the running statistics of the audio up to
the window's end. Each step's window depends only on the audio, never on how it was chunked: chunks of 20, 40 or
100 ms give the same features (up to float rounding: windows encoded in one batch round differently). With both
contexts None (unbounded) the one window is the whole clip at the end of the stream and the features are exactly
AudioEncoder.encode's (the offline path's).

A video frame k (at k / fps) can be generated once its generator window (timing.generator_window_end: 120 ms past
the frame's start, plus the last feature's 25 ms receptive field) has features: it leaves the stream
125 ms + right context after its own audio, plus the chunk's own length and the device step.

Silence: a frame whose whole generator window is quieter than `silence_db` (RMS, dBFS) shows the avatar's idle
face for that source frame: the generator's face for digital silence (the features of zeros), generated once per
source frame and then reused. Why not the source frame's own mouth: avatars are often cut from talking videos;
why not the silent audio's own features: room noise, normalised, drives the mouth. The same generator draws both,
so speech and silence join without a seam, and a listening avatar costs no device time once its idle faces exist.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lipsync import timing
from lipsync.audio_encoder import AudioEncoder, GraphedHiddenStates, Moments
from lipsync.cuda_graph import recording
from lipsync.errors import UserError
from lipsync.inference.generation import GraphedLatentGeneration, faces_from_latents
from lipsync.inference.models import LipSyncModels
from lipsync.iterables import batched

if TYPE_CHECKING:
    from lipsync.realtime.avatar import Avatar

STEP_FEATURES = 2  # feature frames encoded per window (40 ms: one video frame at 25 fps)
SILENCE_WINDOW_S = 1.0  # zeros encoded for the silence features (their middle rows are taken)


@dataclass
class StreamOptions:
    """How a stream turns speech into frames (Avatar.stream, the server's connections)."""
    # seconds of audio before a step that its window includes; None: everything since the stream started
    left_context_s: float | None = 1.0
    # seconds of audio after a step that its window includes (latency added); None: wait for the stream's end
    right_context_s: float | None = 0.1
    # frames whose generator window is quieter than this (RMS, dBFS) show the idle face; None: no gate
    silence_db: float | None = -50.0
    # floor of the normalisation's standard deviation: a stream that starts in silence does not amplify noise
    # up to unit variance (speech sits around 0.03-0.1; offline's floor is sqrt(1e-7))
    min_std: float = 0.01
    color_match: bool = False  # match the generated lower face's colours to the source frame's

    @property
    def window_samples(self) -> int | None:
        """Samples of every encoder window of a stream once its left context is full (and before its end); None
        when either context is unbounded (windows of growing length)."""
        if self.left_context_s is None or self.right_context_s is None:
            return None
        features = (round(self.left_context_s * timing.FEATURE_RATE) + STEP_FEATURES
                    + round(self.right_context_s * timing.FEATURE_RATE))
        return timing.num_samples_for_features(features)

    def check(self) -> None:
        for name in ("left_context_s", "right_context_s"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise UserError(f"--{name} must be >= 0 seconds (or none), got {value}")
        if self.min_std < 0:
            raise UserError(f"min_std must be >= 0, got {self.min_std}")


def pcm_samples(chunk) -> np.ndarray:
    """One chunk of 16 kHz mono PCM: int16, or float in [-1, 1] -> float32 [n]. One-line UserError otherwise."""
    samples = np.asarray(chunk)
    if samples.ndim != 1:
        raise UserError(f"audio chunks are mono: a 1-D array of samples, got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768
    if samples.dtype not in (np.float32, np.float64):
        raise UserError(f"audio chunks are int16 or float32 PCM, got {samples.dtype}")
    samples = samples.astype(np.float32)
    if samples.size and not np.isfinite(samples).all():
        raise UserError("audio chunk holds NaN or infinite samples: not PCM")
    if samples.size and np.abs(samples).max() > 1.5:
        raise UserError(f"float PCM is in [-1, 1]; this chunk reaches {np.abs(samples).max():.4g} "
                        f"(int16 samples sent as float?)")
    return samples


@dataclass(eq=False)
class FeatureRequest:
    """One encoder window of one stream: feature frames [first, last) are kept from a window whose first feature
    frame is `start`; `window` holds its normalised samples, float32 [(end - start - 1) * 320 + 400]."""
    owner: "StreamingFeatures"
    first: int
    last: int
    start: int
    window: np.ndarray


class StreamingFeatures:
    """Wav2Vec2 features of a growing signal, frame by frame, each from a window of bounded context (module doc).
    Requests are made here and encoded by whoever owns the device (FrameGenerator.features), several streams'
    windows of one length in one call. The features stay on the encoder's device: the frames that use them are
    generated there, and a tick then waits for the device once (for its faces), not also for its features."""

    def __init__(self, encoder: AudioEncoder, left_context_s: float | None, right_context_s: float | None,
                 min_std: float):
        self.encoder = encoder
        self.left = None if left_context_s is None else round(left_context_s * timing.FEATURE_RATE)
        self.right = None if right_context_s is None else round(right_context_s * timing.FEATURE_RATE)
        self.min_std = min_std
        self.audio = np.zeros(0, np.float32)  # raw samples [offset, received)
        self.offset = 0
        self.received = 0
        self.ended = False
        self.moments = Moments()  # of samples [0, counted)
        self.counted = 0
        self.requested = 0  # feature frames [0, requested) requested
        # float32 [n, D] on the device: rows [feature_offset, feature_offset + n)
        self.features = torch.zeros(0, encoder.hidden_size, device=encoder.device)
        self.feature_offset = 0
        self.outstanding: set[int] = set()  # `first` of requests not yet accepted

    def push(self, samples: np.ndarray) -> None:
        if self.ended:
            raise UserError("audio after the end of the stream")
        self.audio = np.concatenate([self.audio, samples])
        self.received += len(samples)

    def end(self) -> None:
        self.ended = True

    @property
    def total(self) -> int | None:
        """Feature frames of the whole stream, once it has ended."""
        return timing.num_feature_frames(self.received) if self.ended else None

    @property
    def available(self) -> int:
        """Feature frames [0, available) are computed."""
        return min(self.outstanding, default=self.requested)

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Raw samples [start, stop) (clipped to what was received and kept)."""
        stop = max(min(stop, self.received), self.offset)
        return self.audio[max(start, self.offset) - self.offset:stop - self.offset]

    def trim(self, keep_from: int) -> None:
        """Forget raw samples before `keep_from` (never those a future window needs)."""
        if self.left is None:
            return
        keep_from = min(keep_from, max(0, self.requested - self.left) * timing.FEATURE_HOP, self.counted)
        if keep_from - self.offset > timing.AUDIO_SAMPLE_RATE:  # copy the buffer at most once a second
            self.audio = self.audio[keep_from - self.offset:]
            self.offset = keep_from

    def window_ready(self) -> bool:
        """Has the audio of the next window (with its right context) arrived?"""
        total = self.total
        if total is not None:
            return self.requested < total
        return self.right is not None and self.received >= timing.num_samples_for_features(
            self.requested + STEP_FEATURES + self.right)

    def requests(self, limit: int) -> list[FeatureRequest]:
        """Up to `limit` new windows whose audio (with its right context) has arrived."""
        out = []
        while len(out) < limit and self.window_ready():
            first = self.requested
            total = self.total
            if total is not None:  # the end: the rest, its right context cut by the end of the stream
                last = total if self.right is None else min(first + STEP_FEATURES, total)
                end = total if self.right is None else min(last + self.right, total)
            else:
                last = first + STEP_FEATURES
                end = last + self.right
            start = 0 if self.left is None else max(0, first - self.left)
            stop = timing.num_samples_for_features(end)
            # statistics of the audio up to the window's end (all of it once the window reaches the last frame,
            # as the offline encoder counts the samples past the last feature's receptive field too)
            count_to = self.received if total is not None and end == total else stop
            if count_to > self.counted:
                self.moments.add(self.samples(self.counted, count_to))
                self.counted = count_to
            window = self.encoder.normalized(self.samples(start * timing.FEATURE_HOP, stop), self.moments,
                                             self.min_std)
            out.append(FeatureRequest(self, first, last, start, window))
            self.outstanding.add(first)
            self.requested = last
        return out

    def accept(self, request: FeatureRequest, hidden: torch.Tensor) -> None:
        """The encoder's hidden states of the request's window [n, D] (on the device) -> feature frames
        [first, last). Rows are written once and never changed (rows() hands out views of them)."""
        rows = hidden[request.first - request.start:request.last - request.start]
        needed = request.last - self.feature_offset
        if needed > len(self.features):
            grown = self.features.new_zeros(max(needed, 2 * len(self.features)), self.features.shape[1])
            grown[:len(self.features)] = self.features
            self.features = grown
        self.features[request.first - self.feature_offset:needed] = rows
        self.outstanding.discard(request.first)

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        """Feature frames at absolute `indices` [n] -> [n, D] on the device: a view when the indices run on by
        one (a window inside the stream), else a gather (a window clamped at the stream's start or end)."""
        positions = indices - self.feature_offset
        first = int(positions[0])
        if np.array_equal(positions, np.arange(first, first + len(positions))):
            return self.features[first:first + len(positions)]
        return self.features[torch.from_numpy(positions).to(self.features.device)]

    def drop_features_before(self, index: int) -> None:
        if index - self.feature_offset > 500:  # ~10 s: rebase rarely
            self.features = self.features[index - self.feature_offset:].clone()
            self.feature_offset = index


@dataclass(eq=False)
class FrameJob:
    """One output frame of one stream: source frame `source` with the face generated from `audio` [10, D] (None:
    the idle face, silence), or the source frame unchanged when it has no face."""
    stream: "AvatarStream"
    index: int
    timestamp: float  # seconds from the stream's start: index / fps
    source: int
    has_face: bool
    audio: torch.Tensor | None


class AvatarStream:
    """One stream's state: its audio and features, and which frame comes next. Not thread-safe: one thread (the
    caller of Avatar.stream, or the server's scheduler) drives it."""

    def __init__(self, avatar: "Avatar", options: StreamOptions | None = None):
        self.avatar = avatar
        self.options = options or StreamOptions()
        self.options.check()
        self.features = StreamingFeatures(avatar.models.audio_encoder, self.options.left_context_s,
                                          self.options.right_context_s, self.options.min_std)
        self.fps = avatar.fps
        self.next_frame = 0
        self.threshold = None if self.options.silence_db is None else 10 ** (self.options.silence_db / 20)

    def push(self, chunk) -> None:
        """One chunk of 16 kHz mono PCM (pcm_samples' rules)."""
        self.features.push(pcm_samples(chunk))

    def end(self) -> None:
        self.features.end()

    @property
    def num_frames(self) -> int | None:
        """Frames of the whole stream (as lip_sync counts them for the same audio), once it has ended."""
        return timing.num_video_frames(self.features.received, self.fps) if self.features.ended else None

    @property
    def finished(self) -> bool:
        return self.features.ended and self.next_frame >= self.num_frames

    @property
    def backlog_s(self) -> float:
        """Seconds of received audio that frames have not reached yet."""
        return max(0.0, self.features.received / timing.AUDIO_SAMPLE_RATE - self.next_frame / self.fps)

    def feature_requests(self, limit: int) -> list[FeatureRequest]:
        return self.features.requests(limit)

    def window_ready(self) -> bool:
        """Is a speech window waiting for the encoder?"""
        return self.features.window_ready()

    def frame_due(self) -> bool:
        """Is the next frame's generator window computed?"""
        features = self.features
        if features.ended:
            return self.next_frame < self.num_frames and features.available >= features.total
        return features.available >= timing.generator_window_end(self.next_frame, self.fps)

    def due_jobs(self, limit: int) -> list[FrameJob]:
        """Up to `limit` next frames whose generator windows are computed, in order."""
        jobs = []
        features = self.features
        while len(jobs) < limit and self.frame_due():
            k = self.next_frame
            known = features.available  # == features.total once the stream has ended (frame_due)
            source = self.avatar.source_frame(k)
            audio = None
            if known > 0:
                indices = timing.generator_window_indices([k], known, self.fps)[0]  # [10]
                if not self._silent(indices):
                    audio = features.rows(indices)
            jobs.append(FrameJob(self, k, k / self.fps, source, bool(self.avatar.found[source]), audio))
            self.next_frame += 1
        start = timing.generator_window_start(self.next_frame, self.fps)
        features.trim(max(0, start) * timing.FEATURE_HOP)
        features.drop_features_before(max(0, start))
        return jobs

    def _silent(self, indices: np.ndarray) -> bool:
        """Is the audio under the window's feature frames `indices` quieter than the gate?"""
        if self.threshold is None:
            return False
        samples = self.features.samples(int(indices[0]) * timing.FEATURE_HOP,
                                        int(indices[-1]) * timing.FEATURE_HOP + timing.FEATURE_RECEPTIVE_FIELD)
        return samples.size == 0 or float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < self.threshold


def _bucket(rows: int, max_batch: int) -> int:
    """The batch shape `rows` rows are padded to for compiled models and CUDA graphs: the next power of two."""
    return min(max_batch, 1 << max(0, rows - 1).bit_length())


class FrameGenerator:
    """The device step of any number of streams on one set of models: their encoder windows, batched by length,
    and their frame jobs, batched up to `max_batch` rows. On CUDA both are replayed as recorded graphs, one per
    power-of-two batch shape, padded to it: the frames always, the encoder for windows of `window_samples`
    (StreamOptions.window_samples: every window of a stream whose context is full); other lengths run eagerly."""

    def __init__(self, models: LipSyncModels, max_batch: int = 16, cuda_graph: bool = True,
                 window_samples: int | None = None):
        if max_batch < 1:
            raise UserError(f"max_batch must be >= 1, got {max_batch}")
        self.models = models
        self.max_batch = max_batch
        self.graphed = cuda_graph and models.device.type == "cuda"
        self.window_samples = window_samples if self.graphed else None
        self._silence: torch.Tensor | None = None

    @torch.inference_mode()
    def features(self, requests: list[FeatureRequest]) -> None:
        """Encode the requests' windows (one encoder call per window length) and hand each its feature frames."""
        by_length: dict[int, list[FeatureRequest]] = {}
        for request in requests:
            by_length.setdefault(len(request.window), []).append(request)
        for length, group in by_length.items():
            graphed = length == self.window_samples
            for piece in batched(group, self.max_batch if graphed else 4 * self.max_batch):
                windows = np.stack([r.window for r in piece])
                hidden = (self._encoder_graph(len(piece))(windows) if graphed
                          else self.models.audio_encoder.hidden_states(windows)).float()
                for request, states in zip(piece, hidden):  # device to device: no wait for the encoder here
                    request.owner.accept(request, states)

    def _encoder_graph(self, rows: int) -> GraphedHiddenStates:
        """The recorded encoder call for `rows` windows of `window_samples` (padded to a power of two)."""
        key = ("speech encoder", _bucket(rows, self.max_batch), self.window_samples)
        with recording:
            if key not in self.models.graphs:
                self.models.graphs[key] = GraphedHiddenStates(self.models.audio_encoder, key[1], key[2])
        return self.models.graphs[key]

    @property
    def silence(self) -> torch.Tensor:
        """The generator window [10, D] of digital silence (on the device): the encoder's features of zeros
        (middle rows)."""
        if self._silence is None:
            samples = round(SILENCE_WINDOW_S * timing.AUDIO_SAMPLE_RATE)
            hidden = self.models.audio_encoder.hidden_states(np.zeros((1, samples), np.float32))[0].float()
            middle = (len(hidden) - timing.GENERATOR_AUDIO_FRAMES) // 2
            self._silence = hidden[middle:middle + timing.GENERATOR_AUDIO_FRAMES].clone()
        return self._silence

    @torch.inference_mode()
    def faces(self, jobs: list[FrameJob]) -> list[np.ndarray | None]:
        """Faces uint8 [S, S, 3] (CPU) of the jobs, None for frames without a face. Idle faces come from each
        avatar's cache; those not yet cached are generated once (from the silence window) and kept."""
        out: list[np.ndarray | None] = [None] * len(jobs)
        rows = []  # (avatar, source, audio [10, D], positions in `out`)
        idle_rows = {}
        for i, job in enumerate(jobs):
            if not job.has_face:
                continue
            avatar = job.stream.avatar
            if job.audio is not None:
                rows.append((avatar, job.source, job.audio, [i]))
            elif job.source in avatar.idle_faces:
                out[i] = avatar.idle_faces[job.source]
            elif (id(avatar), job.source) in idle_rows:
                idle_rows[(id(avatar), job.source)][3].append(i)
            else:
                idle_rows[(id(avatar), job.source)] = (avatar, job.source, None, [i])
                rows.append(idle_rows[(id(avatar), job.source)])
        for piece in batched(rows, self.max_batch):
            faces = self._generate([(avatar, source, self.silence if audio is None else audio)
                                    for avatar, source, audio, _ in piece])
            for (avatar, source, audio, positions), face in zip(piece, faces):
                if audio is None:
                    avatar.idle_faces[source] = face
                for i in positions:
                    out[i] = face
        return out

    def _generate(self, rows: list) -> np.ndarray:
        """rows of (avatar, source frame, audio window [10, D] on the device) -> faces uint8 [n, S, S, 3] (CPU).
        The inputs are gathered from views (slices, no index uploads): the faces' copy back is the one wait."""
        models = self.models
        masked = torch.cat([avatar.masked[source:source + 1] for avatar, source, _ in rows]).to(models.device)
        references = torch.cat([avatar.reference[source:source + 1] for avatar, source, _ in rows]).to(models.device)
        audio = torch.stack([window for _, _, window in rows]).to(models.device)
        bucket = _bucket(len(rows), self.max_batch)
        if self.graphed:
            faces = GraphedLatentGeneration.for_models(models, bucket, audio.shape[-1])(masked, references, audio)
        else:
            faces = faces_from_latents(models, masked, references, audio, bucket if models.compiled else None)
        return faces.cpu().numpy()

    @torch.inference_mode()
    def warm_up(self, avatar: "Avatar") -> None:
        """Record (or compile) every batch shape now, not on a stream's first frames."""
        if not (self.graphed or self.models.compiled):
            return
        size = 1
        while True:
            self._generate([(avatar, int(np.flatnonzero(avatar.found)[0]), self.silence)] * size)
            if self.window_samples is not None:
                self._encoder_graph(size)
            if size >= self.max_batch:
                return
            size = min(2 * size, self.max_batch)
