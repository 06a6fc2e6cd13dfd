"""Small real ONNX models built by hand with onnx.helper, for the fast tests: no exporter, no
torch. Each is a real graph ONNX Runtime runs; nothing is mocked."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

C = 6  # channels of the hand-built LayerNorm2d


def layernorm2d(opset: int, eps: float = 1e-5, affine: bool = True) -> onnx.ModelProto:
    """x (N, C, H, W) -> (x - E_c[x]) / sqrt(E_c[(x - E_c[x])^2] + eps) * w + b, decomposed the
    way the exporters write it: ReduceMean axes as an attribute below opset 18, an input from 18."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(eps, np.float32), "eps"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two")]  # fmt: skip
    nodes = [
        _mean("x", "mean", opset, inits),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        _mean("d2", "var", opset, inits),
        helper.make_node("Add", ["var", "eps"], ["var_eps"]),
        helper.make_node("Sqrt", ["var_eps"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["norm"] if affine else ["y"]),
    ]
    if affine:
        weight = rng.uniform(0.5, 1.5, (C, 1, 1)).astype(np.float32)
        bias = rng.uniform(-0.5, 0.5, (C, 1, 1)).astype(np.float32)
        inits += [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
        nodes += [helper.make_node("Mul", ["norm", "w"], ["scaled"]),
                  helper.make_node("Add", ["scaled", "b"], ["y"])]  # fmt: skip
    return _model(nodes, inits, opset, [None, C, None, None], [None, C, None, None])


def spatial_norm(opset: int) -> onnx.ModelProto:
    """A look-alike: the same arithmetic over H and W (an InstanceNorm), not over C."""
    model = layernorm2d(opset, affine=False)
    if opset >= 18:
        axes = np.array([2, 3], np.int64)
        model.graph.initializer.append(numpy_helper.from_array(axes, "spatial_axes"))
    for node in model.graph.node:
        if node.op_type == "ReduceMean" and opset < 18:
            node.attribute[0].CopyFrom(helper.make_attribute("axes", [2, 3]))
        elif node.op_type == "ReduceMean":
            node.input[1] = "spatial_axes"
    return model


def classifier(labels: tuple[str, ...] = tuple("0123456789"), seed: int = 1) -> onnx.ModelProto:
    """A real (untrained, deterministic) image classifier with ln2d's serving metadata:
    (N, 1, 8, 8) -> mean over H, W -> (N, 1) -> Gemm -> (N, classes) logits. Another ``seed``
    is another model with the same interface (a new version)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((1, len(labels))).astype(np.float32)
    bias = np.arange(len(labels), dtype=np.float32) / 10
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "hw")]  # fmt: skip
    nodes = [helper.make_node("ReduceMean", ["input", "hw"], ["pooled"], keepdims=0),
             helper.make_node("Gemm", ["pooled", "w", "b"], ["logits"])]  # fmt: skip
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, len(labels)])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    meta = {"name": "tiny", "labels": json.dumps(list(labels)),
            "input": json.dumps({"channels": 1, "height": 8, "width": 8, "mean": [0.5],
                                 "std": [0.25], "scale": 1 / 255})}  # fmt: skip
    for key, value in meta.items():
        model.metadata_props.add(key=f"ln2d.{key}", value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def _mean(source: str, out: str, opset: int, inits: list) -> onnx.NodeProto:
    if opset < 18:
        return helper.make_node("ReduceMean", [source], [out], axes=[1], keepdims=1)
    if not any(i.name == "channel_axis" for i in inits):
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "channel_axis"))
    return helper.make_node("ReduceMean", [source, "channel_axis"], [out], keepdims=1)


def _model(nodes, inits, opset, in_shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# A machine that recorded a parity record elsewhere: what a model made on a VNNI server says.
ELSEWHERE = {
    "machine": "x86_64",
    "cpu_features": ["X86_V2", "X86_V3", "X86_V4", "AVX512VNNI"],
    "provider": "cpu",
    "onnxruntime": "1.32.0",
}


def with_record(model: onnx.ModelProto, shift: float = 0.0) -> onnx.ModelProto:
    """``classifier``'s model carrying a parity record of four random inputs and its logits
    computed here in float64 numpy (mean over H and W, then the Gemm), plus ``shift``: a record
    that holds (0), or one that a drift of ``shift`` breaks."""
    from ln2d.export import metadata
    from ln2d.metadata import ModelMetadata
    from ln2d.parity_record import ParityRecord

    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    x = np.random.default_rng(7).standard_normal((4, 1, 8, 8)).astype(np.float32)
    logits = x.astype(np.float64).mean(axis=(2, 3)) @ weights["w"] + weights["b"] + shift
    record = ParityRecord(
        {"input": x}, (logits.astype(np.float32),), 1e-4, 1e-4, "numpy", ELSEWHERE, 0.1
    )
    recorded = onnx.ModelProto()
    recorded.CopyFrom(model)
    metadata.write(recorded, ModelMetadata(parity_record=record))
    return recorded
