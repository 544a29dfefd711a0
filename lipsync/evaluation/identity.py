"""CSIM: cosine similarity of ArcFace identity embeddings, output video against the source identity.

ArcFace: an insightface ONNX recognition model given by path (w600k_r50.onnx of buffalo_l; any model with input
[N, 3, 112, 112] and a 512-d output), run with onnxruntime (by torch on a GPU), input RGB (x - 127.5) / 127.5 as
insightface feeds it.
Faces are aligned as insightface does (a similarity transform of 5 landmarks onto its 112 x 112 ArcFace template,
least squares), with the landmarks of this project's bundled RetinaFace (insightface detects them with SCRFD:
landmarks, so embeddings, differ slightly).

CSIM of a video = mean over its frames of cos(embedding of the output frame, source identity), the source identity
being the normalised mean embedding of the source video's frames (so it needs no frame correspondence and works
for any system and either protocol).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import UserError
from lipsync.evaluation.weights import weight_path

ARCFACE_SIZE = 112
# insightface's arcface_dst: the 5 landmarks (eyes, nose tip, mouth corners) of a 112 x 112 aligned face
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking points src [K, 2] onto dst [K, 2]
    (Umeyama 1991, what skimage's SimilarityTransform.estimate computes for insightface) -> 2 x 3 matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_faces(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """frames [B, H, W, 3], landmarks [B, 5, 2] (finite) -> aligned faces [B, 112, 112, 3] (insightface's
    norm_crop: warpAffine, bilinear, black border)."""
    return np.stack([cv2.warpAffine(frame, similarity_transform(points, ARCFACE_TEMPLATE), (ARCFACE_SIZE,) * 2,
                                    borderValue=0.0) for frame, points in zip(frames, landmarks)])


class ArcFace:
    """An insightface ArcFace ONNX model: aligned RGB faces -> unit-norm embeddings. runtime: "onnxruntime" (the
    default on a CPU) or "torch" (the default on a CUDA device: lipsync.onnx_graph runs the same graph there,
    outputs equal to onnxruntime's within ~1e-5; a graph with operators it lacks stays on onnxruntime)."""

    def __init__(self, path, device="cpu", runtime: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise UserError(f"{path} is not an ONNX model onnxruntime can load ({str(err).splitlines()[0]})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        shape = list(inputs[0].shape) if len(inputs) == 1 else None
        if shape is None or len(shape) != 4 or shape[1:] != [3, ARCFACE_SIZE, ARCFACE_SIZE] or len(outputs) != 1:
            raise UserError(f"{path} is not an ArcFace recognition model: it takes {[i.shape for i in inputs]}, "
                            f"not one [N, 3, {ARCFACE_SIZE}, {ARCFACE_SIZE}] input")
        self.input_name = inputs[0].name
        self.batch = shape[0] if isinstance(shape[0], int) else None  # fixed batch size of some exports
        self.network = None
        import torch

        self.device = torch.device(device)
        if (runtime or ("torch" if self.device.type == "cuda" else "onnxruntime")) == "torch":
            from lipsync.onnx_graph import OnnxGraph, TorchOnnxModule

            try:
                self.network = TorchOnnxModule(OnnxGraph(Path(path).read_bytes())).to(self.device).eval()
            except ValueError:  # operators the torch runner lacks: onnxruntime on the CPU, as before
                if runtime == "torch":
                    raise

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.network is None:
            return self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[0]
        import torch

        with torch.inference_mode():
            return self.network(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))[0].float().cpu().numpy()

    def embed(self, faces: np.ndarray) -> np.ndarray:
        """Aligned faces [N, 112, 112, 3] RGB uint8 -> float32 [N, D], unit norm."""
        x = ((faces.astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
        step = self.batch or 64
        out = []
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            if self.batch and len(chunk) < self.batch:  # a fixed-batch export: pad the last call
                chunk = np.concatenate([chunk, np.zeros((self.batch - len(chunk), *chunk.shape[1:]), np.float32)])
            out.append(self._run(chunk)[:len(x[i:i + step])])
        embeddings = np.concatenate(out).reshape(len(x), -1).astype(np.float32) if out else np.zeros((0, 512))
        return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def load_arcface(weights_dir, check: str = "sha256", device="cpu") -> ArcFace:
    return ArcFace(weight_path(weights_dir, "arcface", check), device)


def face_embeddings(arcface: ArcFace, detector, frames: np.ndarray, batch_size: int = 32,
                    landmarks: np.ndarray | None = None) -> np.ndarray:
    """frames [N, H, W, 3] RGB uint8 -> embeddings [M, D] of the M frames where a face (and landmarks) is found.
    landmarks: the detector's [N, 5, 2] of these frames, when the caller has them (lipsync.faces.detect_video)."""
    out = []
    for i in range(0, len(frames), batch_size):
        chunk = frames[i:i + batch_size]
        points = detector.detect_landmarks(chunk) if landmarks is None else landmarks[i:i + batch_size]
        found = np.isfinite(points).all(axis=(1, 2))
        if found.any():
            out.append(arcface.embed(align_faces(chunk[found], points[found])))
    return np.concatenate(out) if out else np.zeros((0, 512), np.float32)


def csim(output_embeddings: np.ndarray, source_embeddings: np.ndarray) -> float:
    """Mean cosine of each output frame's embedding with the source identity (normalised mean embedding)."""
    if not len(output_embeddings) or not len(source_embeddings):
        return float("nan")
    identity = source_embeddings.mean(0)
    identity = identity / max(np.linalg.norm(identity), 1e-12)
    return float((output_embeddings @ identity).mean())
