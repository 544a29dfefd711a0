"""lipsync.onnx_graph: the face detector's ONNX graph run by torch gives onnxruntime's outputs."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from retinaface.weights import WEIGHTS

from lipsync.onnx_graph import OnnxGraph, TorchOnnxModule, _fields, _ints, _varint


@pytest.fixture(scope="module")
def graph() -> OnnxGraph:
    return OnnxGraph(WEIGHTS)


def test_graph_reads_the_detector_model(graph):
    assert graph.inputs == ["input"] and graph.outputs == ["loc", "conf", "landmarks"]
    assert sum(node.op == "Conv" for node in graph.nodes) == 59
    weights = [t for t in graph.initializers.values() if t.is_floating_point()]
    assert sum(t.numel() for t in weights) > 100_000 and all(torch.isfinite(t).all() for t in weights)


# odd sizes: the FPN's nearest upsampling then maps n -> 2n - 1 rows, where the index rule matters
@pytest.mark.parametrize("height, width", [(480, 480), (270, 480), (161, 97), (33, 45)])
def test_outputs_equal_onnxruntime(graph, height, width):
    x = np.random.default_rng(height).uniform(-120, 130, (2, 3, height, width)).astype(np.float32)
    expected = ort.InferenceSession(WEIGHTS, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    with torch.inference_mode():
        outputs = TorchOnnxModule(graph).eval()(torch.from_numpy(x))
    for want, got in zip(expected, outputs):
        assert tuple(got.shape) == want.shape
        np.testing.assert_allclose(got.numpy(), want, atol=1e-4, rtol=1e-4)


def test_varints_and_negative_int64():
    assert _varint(bytes([0xAC, 0x02]), 0) == (300, 2)
    minus_one = bytes([0xFF] * 9 + [0x01])  # int64 -1 as a protobuf varint
    assert _ints(0, _varint(minus_one, 0)[0]) == [-1]
    assert _ints(2, bytes([0x01, 0x96, 0x01])) == [1, 150]  # packed
    assert _fields(bytes([0x08, 0x05, 0x12, 0x02, 0x61, 0x62])) == [(1, 0, 5), (2, 2, b"ab")]


def test_unknown_operator_and_non_model_are_errors(graph):
    with pytest.raises(ValueError, match="not an ONNX model"):
        OnnxGraph(b"")
    odd = OnnxGraph(WEIGHTS)
    odd.nodes[0].op = "Gelu"
    with pytest.raises(ValueError, match="Gelu"):
        TorchOnnxModule(odd)
