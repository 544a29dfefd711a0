"""An avatar: a face video (or image) prepared once for streaming, with everything that does not depend on the
speech cached in one folder, and its frames streamed from speech chunks.

    prepare_avatar(models, face, folder, ...)    # the ONE writer of the folder (temp name, then rename)
    avatar = Avatar.load(folder, models)          # the ONE reader: well under a second (frames memory-mapped)
    for timestamp, frame in avatar.stream(chunks): ...

Folder (`avatars/NAME/`):
- `avatar.json`: format version, source, fps, frame count and size, crop size, codec id, latent shape, face options
- `frames.u8`: the source frames, raw RGB uint8 [N, H, W, 3] (C order, shape in avatar.json), memory-mapped
- `avatar.safetensors`: `boxes` float32 [N, 4] square crop boxes, `found` uint8 [N], `crops` uint8 [N, S, S, 3],
  `masked` and `reference` float32 [N, C, h, w] scaled latents (zeros where no face), `mask` float32 [S, S] the
  lower-face paste mask, `order` int64 [P] one ping-pong period (output frame k shows source order[k % P])

The recipe is lip_sync's: the same decoder, detector, smoothing, square crop, codec step (`encode_faces`), paste
mask and ping-pong order, so a stream with full context gives lip_sync's frames (tests/test_realtime.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from lipsync.errors import UserError
from lipsync.faces import (
    FaceDetector,
    color_match,
    crop_boxes,
    crop_faces,
    face_boxes,
    fixed_box,
    lower_face_mask,
    paste_faces,
)
from lipsync.files import atomic_path
from lipsync.inference.generation import encode_faces
from lipsync.inference.models import LipSyncModels
from lipsync.inference.pipeline import open_face
from lipsync.iterables import batched
from lipsync.video_io import pingpong_indices

FORMAT_VERSION = 1
JSON_FILE, FRAMES_FILE, ARRAYS_FILE = "avatar.json", "frames.u8", "avatar.safetensors"


@torch.inference_mode()
def prepare_avatar(models: LipSyncModels, face, folder, pads=(0, 10, 0, 0), box=None, resize_factor: int = 1,
                   nosmooth: bool = False, static: bool = False, fps: float = 25.0, ref_frame: int | None = None,
                   batch_size: int = 16, max_seconds: float | None = None,
                   on_progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Prepare `face` (video or image) as an avatar in `folder` (replaced as a whole if it exists) -> summary.

    Face options are lip_sync's (pads, box top bottom left right, resize_factor, nosmooth, static, fps of a still
    image, ref_frame: one fixed reference face). max_seconds: keep only the start of a long video (the frames are
    stored raw: 10 s of 512 x 512 at 25 fps take 197 MB). on_progress(step, done, total)."""
    started = time.perf_counter()
    source = open_face(face, static, fps, resize_factor)
    max_frames = None if max_seconds is None else max(1, round(max_seconds * source.fps))
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        num = 0
        with open(tmp / FRAMES_FILE, "wb") as raw:  # frames written as they are decoded (a video is never in memory)
            def frames_written():
                nonlocal num
                for frame in source.frames():
                    if max_frames is not None and num >= max_frames:
                        return
                    raw.write(np.ascontiguousarray(frame).tobytes())
                    num += 1
                    if on_progress is not None and num % batch_size == 0:
                        on_progress("detect", num, source.num_frames)
                    yield frame

            if box is not None:
                num_read = sum(1 for _ in frames_written())
                boxes, found = crop_boxes(fixed_box(box, num_read), pads, smooth=False)
            else:
                boxes, found = face_boxes(frames_written(), FaceDetector(device=models.device), batch_size=batch_size,
                                          pads=pads, smooth=not nosmooth and source.still is None)
        if num == 0:
            raise UserError(f"{face} has no frames")
        if not found.any():
            raise UserError(f"no face found in any of the {num} frames of {face}")
        if ref_frame is not None and not (0 <= ref_frame < num and found[ref_frame]):
            raise UserError(f"--ref_frame {ref_frame}: " + ("no face found in that frame" if 0 <= ref_frame < num
                                                            else f"the face input has only {num} frames"))
        frames = np.memmap(tmp / FRAMES_FILE, np.uint8, "r", shape=(num, source.height, source.width, 3))
        size = models.image_size
        latent = models.codec.latent_size(size)
        crops = np.zeros((num, size, size, 3), np.uint8)
        masked = np.zeros((num, models.codec.latent_channels, latent, latent), np.float32)
        own = np.zeros_like(masked)
        rows = np.flatnonzero(found)
        for done, batch in enumerate(batched(rows, batch_size), 1):
            batch = np.array(batch)
            crops[batch] = crop_faces(frames[batch], boxes[batch], size)
            on_device = torch.from_numpy(crops[batch]).to(models.device)
            masked_batch, own_batch = encode_faces(models, on_device, None, None)
            masked[batch] = masked_batch.float().cpu().numpy()
            own[batch] = own_batch.float().cpu().numpy()
            if on_progress is not None:
                on_progress("encode", min(done * batch_size, len(rows)), len(rows))
        reference = own if ref_frame is None else np.broadcast_to(own[ref_frame], own.shape).copy()
        order = pingpong_indices(num, max(2 * num - 2, 1))  # one period: 0 .. N-1, N-2 .. 1
        save_file({"boxes": np.nan_to_num(boxes).astype(np.float32), "found": found.astype(np.uint8),
                   "crops": crops, "masked": masked, "reference": reference, "order": order,
                   "mask": lower_face_mask(size)}, str(tmp / ARRAYS_FILE))
        meta = {"version": FORMAT_VERSION, "source": str(face), "fps": source.fps, "num_frames": num,
                "height": source.height, "width": source.width, "image_size": size,
                "codec": models.codec.model_id, "latent_shape": list(masked.shape[1:]),
                "faces_found": int(found.sum()), "pads": list(pads), "box": list(box) if box is not None else None,
                "resize_factor": resize_factor, "nosmooth": nosmooth, "static": static, "ref_frame": ref_frame,
                "prepared_on": f"{models.device} ({str(models.dtype).replace('torch.', '')})"}
        (tmp / JSON_FILE).write_text(json.dumps(meta, indent=1))
    return {**meta, "folder": str(folder), "seconds": round(time.perf_counter() - started, 3)}


@dataclass(eq=False)
class Avatar:
    """A prepared avatar bound to the models that stream it (latents on their device, in their dtype)."""
    name: str
    meta: dict
    models: LipSyncModels
    frames: np.ndarray  # uint8 [N, H, W, 3], memory-mapped
    boxes: np.ndarray  # float32 [N, 4] square crop boxes (meaningful where found)
    found: np.ndarray  # bool [N]
    crops: np.ndarray  # uint8 [N, S, S, 3]
    masked: torch.Tensor  # [N, C, h, w] on the models' device and dtype
    reference: torch.Tensor  # [N, C, h, w]
    mask: np.ndarray  # float32 [S, S] lower-face paste mask in crop coordinates
    order: np.ndarray  # int64 [P] source frame of output frame k = order[k % P]
    idle_faces: dict = field(default_factory=dict)  # source frame -> uint8 [S, S, 3] face generated from silence

    @property
    def fps(self) -> float:
        return float(self.meta["fps"])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the output frames."""
        return int(self.meta["width"]), int(self.meta["height"])

    @classmethod
    def load(cls, folder, models: LipSyncModels) -> "Avatar":
        """Read an avatar folder written by prepare_avatar. One-line UserError for a missing or foreign folder,
        or one prepared for another codec or crop size than `models` use."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / JSON_FILE).read_text())
        except FileNotFoundError:
            raise UserError(f"no avatar in {folder} (prepare one with prepare_avatar.py)") from None
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read avatar {folder}: {err}") from None
        if meta.get("version") != FORMAT_VERSION:
            raise UserError(f"avatar {folder} has format version {meta.get('version')}, this code reads "
                            f"{FORMAT_VERSION}: prepare it again")
        if meta["image_size"] != models.image_size or meta["codec"] != models.codec.model_id:
            raise UserError(f"avatar {folder} was prepared for {meta['image_size']} px crops with codec "
                            f"{meta['codec']!r}; these models use {models.image_size} px and "
                            f"{models.codec.model_id!r}: prepare it again with this checkpoint")
        shape = (meta["num_frames"], meta["height"], meta["width"], 3)
        try:
            arrays = load_file(str(folder / ARRAYS_FILE))
            frames = np.memmap(folder / FRAMES_FILE, np.uint8, "r", shape=shape)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read avatar {folder}: {err}") from None

        def on_device(name):
            return torch.from_numpy(arrays[name]).to(models.device, models.dtype)

        found = arrays["found"].astype(bool)
        return cls(folder.name, meta, models, frames, arrays["boxes"], found, arrays["crops"], on_device("masked"),
                   on_device("reference"), arrays["mask"], arrays["order"])

    def source_frame(self, index: int) -> int:
        """The source frame shown by output frame `index` (ping-pong over the frames, as lip_sync does)."""
        return int(self.order[index % len(self.order)])

    def compose(self, source: int, face: np.ndarray | None, match_colors: bool = False) -> np.ndarray:
        """Output frame RGB uint8 [H, W, 3]: source frame `source` with the generated face's lower half pasted
        back (lip_sync's paste); the source frame unchanged where it has no face (face None)."""
        frame = np.asarray(self.frames[source])
        if face is None or not self.found[source]:
            return frame.copy()
        if match_colors:
            face = color_match(face, self.crops[source], self.mask)
        return paste_faces(frame[None], self.boxes[source][None], face[None], self.mask)[0]

    def stream(self, chunks: Iterable[np.ndarray], **options) -> Iterator[tuple[float, np.ndarray]]:
        """16 kHz mono PCM chunks of any size (float in [-1, 1], or int16) -> (timestamp s, RGB frame) pairs in
        order, frame k at k / fps, as soon as each frame's audio (and right context) has arrived.

        options: the fields of streaming.StreamOptions (left/right context, silence gate, colour match) and
        `max_batch`, the rows of one generation call."""
        from lipsync.realtime.streaming import AvatarStream, FrameGenerator, StreamOptions

        max_batch = options.pop("max_batch", 16)
        stream = AvatarStream(self, StreamOptions(**options))
        generator = FrameGenerator(self.models, max_batch=max_batch, window_samples=stream.options.window_samples)

        def ready():
            while True:
                generator.features(stream.feature_requests(limit=max_batch))
                jobs = stream.due_jobs(limit=max_batch)
                if not jobs:
                    return
                for job, face in zip(jobs, generator.faces(jobs)):
                    yield job.timestamp, self.compose(job.source, face, stream.options.color_match)

        for chunk in chunks:
            stream.push(chunk)
            yield from ready()
        stream.end()
        yield from ready()
