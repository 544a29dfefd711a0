"""The demo's measurements on held-out faces and speech: mouth-opening correlation and lag, the expert's accuracy
and its LSE-C / LSE-D, the generator's audio gain, SSIM / PSNR against the rendered ground truth, and the
side-by-side video and plot."""
from __future__ import annotations

import numpy as np
import torch

from lipsync import timing
from lipsync.demo import synthetic
from lipsync.video_io import iter_frames
from lipsync.video_writer import write_video


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def best_lag(measured: list[np.ndarray], true: list[np.ndarray], max_lag: int = 3) -> int:
    """The shift (frames) that best lines the measured openings up with the true ones: argmax over lag of the
    mean over clips of Pearson r(measured[t], true[t + lag]). 0 when output frame t shows the audio of frame t;
    an audio window one frame off between training and inference (the reference's bug) gives +-1."""
    def r(m, t, lag):
        m, t = (m[:len(m) - lag], t[lag:]) if lag >= 0 else (m[-lag:], t[:len(t) + lag])
        return pearson(m, t)
    lags = range(-max_lag, max_lag + 1)
    return max(lags, key=lambda lag: np.mean([r(m, t, lag) for m, t in zip(measured, true)]))


def render_truth(face_json: dict, opening: np.ndarray) -> np.ndarray:
    """The ground truth of a driven clip: the face video's person, head motion and frame size, with the mouth of
    the driving speech's true `opening` [N] -> frames [N, size, size, 3] RGB uint8 at the clip's fps."""
    identity = synthetic.Identity(**{key: _tuples(value) for key, value in face_json["identity"].items()})
    size, fps = face_json["size"], face_json["fps"]
    return np.stack([synthetic.render_frame(identity, float(o), k / fps, size) for k, o in enumerate(opening)])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def quality_crops(frames: np.ndarray, boxes: np.ndarray, size: int = 64) -> np.ndarray:
    """Face crops [N, size, size, 3] of frames [N, H, W, 3] in the true face boxes [>= N, 4], made square: the
    same pixels of the output, the input and the ground truth are compared."""
    from lipsync.faces import crop_faces

    boxes = np.asarray(boxes[:len(frames)], np.float64)
    centre, side = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).max(1, keepdims=True)
    return crop_faces(frames, np.concatenate([centre - side / 2, centre + side / 2], 1), size)


def measure_video(path, boxes: np.ndarray) -> np.ndarray:
    """Mouth opening measured in every frame of a video [N] (boxes [>= N, 4] of the face in each frame)."""
    frames = np.stack(list(iter_frames(path, target_fps=timing.VIDEO_FPS)))
    return synthetic.measure_mouth_opening(frames, boxes[:len(frames)])


@torch.no_grad()
def syncnet_accuracy(checkpoint, folders, windows: int, seed: int, batch_size: int = 64) -> float:
    """Accuracy (P(in sync) > 0.5) of the expert on `windows` fixed test windows, half in sync, half not."""
    from lipsync.checkpoint import load_syncnet
    from lipsync.data.datasets import SyncNetDataset
    from models.syncnet import sync_correct

    expert = load_syncnet(checkpoint).syncnet
    dataset = SyncNetDataset(folders, train=False, val_samples=windows, seed=seed)
    correct = 0
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        p = expert.sync_probability(batch["faces"], batch["audio"])
        correct += int(sync_correct(p, batch["label"]).sum())
    return correct / len(dataset)


@torch.no_grad()
def audio_gain(checkpoint, folders, windows: int, seed: int, batch_size: int = 32) -> float:
    """Mouth-region latent L1 of the generator with shuffled audio / with the true audio, on fixed test windows.

    Mouth region: the lower half's middle half of columns ([h/2, h) x [w/4, 3w/4) of the latent), where the
    mouth lies in every crop (faces are centred); the jaw line and the background at the sides, which the
    reference frame explains and the audio does not, are left out. Shuffled = each window gets the audio of
    the next window in the batch (another time or another video)."""
    from lipsync.checkpoint import load_generator
    from lipsync.data.datasets import GeneratorDataset
    from models.unet import generate

    unet = load_generator(checkpoint).unet.eval()
    dataset = GeneratorDataset(folders, train=False, val_samples=windows, seed=seed)
    errors = {"true": 0.0, "shuffled": 0.0}
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        gt = batch["gt"]  # [B, T, C, h, w]
        h, w = gt.shape[-2:]
        for name, audio in (("true", batch["audio"]), ("shuffled", batch["audio"].roll(1, dims=0))):
            generated = generate(unet, batch["masked"].flatten(0, 1), batch["reference"].flatten(0, 1),
                                 audio.flatten(0, 1)).view_as(gt)
            errors[name] += float((generated - gt)[..., h // 2:, w // 4:w - w // 4].abs().mean()) * len(gt)
    return errors["shuffled"] / errors["true"]


def write_side_by_side(path, input_video, output_video, audio_path, scale: int = 2) -> None:
    """input | output, each upscaled `scale`x (the clips are small), with the driving audio."""
    import cv2

    from lipsync.audio import load_audio

    def frames():
        for left, right in zip(iter_frames(input_video), iter_frames(output_video)):
            pair = np.concatenate([left, right], axis=1)
            yield cv2.resize(pair, (pair.shape[1] * scale, pair.shape[0] * scale), interpolation=cv2.INTER_CUBIC)

    write_video(path, frames(), timing.VIDEO_FPS, audio=load_audio(audio_path))


def plot_openings(path, clips: list[dict]) -> None:
    """One panel per test clip: the driving speech's true opening and the opening measured in the output and
    input videos, each mapped onto the true scale by a least-squares line (the measure's slope and offset
    depend on the face)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(clips), 1, figsize=(10, 2.2 * len(clips)), squeeze=False, sharex=True)
    for ax, clip in zip(axes[:, 0], clips):
        true = clip["true"]
        t = np.arange(len(true)) / timing.VIDEO_FPS
        ax.plot(t, true, color="black", lw=1.5, label="true (driving speech)")
        for key, colour in (("output", "tab:red"), ("input", "tab:blue")):
            measured = clip[key]
            fit = np.polyval(np.polyfit(measured, true, 1), measured)
            ax.plot(t, fit, color=colour, lw=1, alpha=0.8,
                    label=f"{key} video, measured (r={clip[key + '_corr']:.2f})")
        ax.set_ylabel(clip["name"])
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle("mouth opening: held-out faces driven by held-out speech")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
