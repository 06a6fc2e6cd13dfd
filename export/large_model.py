"""A ConvNeXt-like ONNX model of a size you choose, written straight to disk, weights as
external data: the model ``ln2d bench-fuse --generate`` measures fusion on past protobuf's
2 GB, where no such model can be downloaded here.

    stem:   Conv 4x4 / 4  -> LayerNorm2d
    blocks: depthwise Conv 7x7 -> LayerNorm2d -> Conv 1x1 (C -> 4C) -> Relu -> Conv 1x1 (4C -> C)
            + the block's input
    head:   global average pool -> Gemm (10 classes)

Each LayerNorm2d is decomposed as TorchScript writes one (ReduceMean, Sub, Pow, ReduceMean,
Add, Sqrt, Div, Mul, Add). Blocks are added until the weights reach the size asked for; the
weights are random, scaled so activations stay near 1, and are written a tensor at a time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ln2d.export.onnx_io import ALIGNMENT

WIDTH = 2048
OPSET = 17
CLASSES = 10
EPS = 1e-6


class _Writer:
    """Nodes, and initializers whose bytes go straight to the data file."""

    def __init__(self, data: Path) -> None:
        self.data, self.nodes, self.initializers = data, [], []
        self._out = data.open("wb")
        self._rng = np.random.default_rng(0)

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        array = self._rng.standard_normal(shape, dtype=np.float32) / np.float32(math.sqrt(fan_in))
        return self.tensor(name, array)

    def tensor(self, name: str, array: np.ndarray) -> str:
        self._out.write(b"\0" * (-self._out.tell() % ALIGNMENT))
        offset = self._out.tell()
        self._out.write(array.tobytes())
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data.name), ("offset", offset),
                           ("length", array.nbytes)):  # fmt: skip
            tensor.external_data.add(key=key, value=str(value))
        self.initializers.append(tensor)
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attributes) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def close(self) -> None:
        self._out.close()


def block_bytes(width: int = WIDTH) -> int:
    """The weights one block adds."""
    return 4 * (width * 49 + 8 * width * width + 8 * width)


def write_model(path: Path, gigabytes: float, width: int = WIDTH) -> int:
    """Write the model to ``path`` and its weights to ``path.data``; return the weights' size."""
    path = Path(path)
    w = _Writer(path.with_name(path.name + ".data"))
    x = w.op("Conv", ["x", w.weight("stem.weight", (width, 3, 4, 4), 48)], "stem", strides=[4, 4],
             kernel_shape=[4, 4])  # fmt: skip
    x = _layernorm2d(w, x, "stem.norm", width)
    blocks = max(1, math.ceil(gigabytes * 2**30 / block_bytes(width)))
    for i in range(blocks):
        x = _block(w, x, f"block{i}", width)
    pooled = w.op("ReduceMean", [x], "pool", axes=[2, 3], keepdims=0)
    head = w.weight("head.weight", (width, CLASSES), width)
    w.op("Gemm", [pooled, head, w.tensor("head.bias", np.zeros(CLASSES, np.float32))], "logits")
    w.close()
    graph = helper.make_graph(
        w.nodes,
        "wide_convnext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", CLASSES])],
        w.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return 4 * sum(math.prod(t.dims) for t in w.initializers)


def _block(w: _Writer, x: str, name: str, width: int) -> str:
    y = w.op("Conv", [x, w.weight(f"{name}.dw.weight", (width, 1, 7, 7), 49)], f"{name}.dwconv",
             group=width, kernel_shape=[7, 7], pads=[3, 3, 3, 3])  # fmt: skip
    y = _layernorm2d(w, y, f"{name}.norm", width)
    y = w.op(
        "Conv", [y, w.weight(f"{name}.pw1.weight", (4 * width, width, 1, 1), width)], f"{name}.pw1"
    )
    y = w.op("Relu", [y], f"{name}.act")
    y = w.op("Conv", [y, w.weight(f"{name}.pw2.weight", (width, 4 * width, 1, 1), 8 * width)],
             f"{name}.pw2")  # fmt: skip
    return w.op("Add", [x, y], f"{name}.out")


def _layernorm2d(w: _Writer, x: str, name: str, width: int) -> str:
    """(x - E_c[x]) / sqrt(E_c[(x - E_c[x])^2] + eps) * weight + bias, as TorchScript writes it."""
    rng = np.random.default_rng(len(w.nodes))
    constants = {
        f"{name}.two": np.array(2.0, np.float32),
        f"{name}.eps": np.array(EPS, np.float32),
    }
    w.initializers += [helper.make_tensor(k, TensorProto.FLOAT, [], [float(v)])
                       for k, v in constants.items()]  # fmt: skip
    mean = w.op("ReduceMean", [x], f"{name}.mean", axes=[1], keepdims=1)
    d = w.op("Sub", [x, mean], f"{name}.sub")
    var = w.op("ReduceMean", [w.op("Pow", [d, f"{name}.two"], f"{name}.pow")], f"{name}.var",
               axes=[1], keepdims=1)  # fmt: skip
    std = w.op("Sqrt", [w.op("Add", [var, f"{name}.eps"], f"{name}.add_eps")], f"{name}.sqrt")
    y = w.op("Div", [d, std], f"{name}.div")
    weight = rng.uniform(0.5, 1.5, (width, 1, 1)).astype(np.float32)
    bias = rng.uniform(-0.1, 0.1, (width, 1, 1)).astype(np.float32)
    y = w.op("Mul", [y, w.tensor(f"{name}.weight", weight)], f"{name}.scale")
    return w.op("Add", [y, w.tensor(f"{name}.bias", bias)], f"{name}.shift")
