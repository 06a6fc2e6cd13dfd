"""Each canonical rewrite on a hand-built graph: the exporter quirk goes, and the graph computes
what it did before (ONNX Runtime, before and after)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_ir.passes import common as passes

from ln2d.export.fusion._ir import reduce_axes
from ln2d.export.fusion.canonicalize import canonical_rules
from tests.onnx_helpers import run

C = 5


def _model(nodes, initializers=(), opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "quirk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _canonical(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = ir.serde.deserialize_model(model)
    passes.ShapeInferencePass(data_prop=True)(graph)
    while canonical_rules().apply_to_model(graph):
        passes.RemoveUnusedNodesPass()(graph)
    return ir.serde.serialize_model(graph)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _same_numbers(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    x = np.random.default_rng(0).uniform(0.5, 2.0, (2, C, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(run(after, x), run(before, x), rtol=1e-6, atol=1e-6)


def _node(op_type: str, *inputs: str, out: str = "y", **attributes) -> onnx.NodeProto:
    return helper.make_node(op_type, list(inputs), [out], **attributes)


CASES = {
    "Div(1, s) -> Reciprocal": (
        [_node("Div", "one", "x")],
        {"one": np.float32(1)},
        ["Reciprocal"],
    ),
    "Pow(s, -0.5) -> Reciprocal(Sqrt)": (
        [_node("Pow", "x", "p")],
        {"p": np.float32(-0.5)},
        ["Sqrt", "Reciprocal"],
    ),
    "Pow(s, 0.5) -> Sqrt": ([_node("Pow", "x", "p")], {"p": np.float32(0.5)}, ["Sqrt"]),
    "ReduceSum / C -> ReduceMean": (
        [_node("ReduceSum", "x", "axis", out="s", keepdims=1), _node("Div", "s", "c")],
        {"axis": np.array([1]), "c": np.float32(C)},
        ["ReduceMean"],
    ),
    "ReduceSum / the C read from the shape -> ReduceMean": (
        [
            _node("Shape", "x", out="shape"),
            _node("Gather", "shape", "one_i", out="c_i"),
            _node("Cast", "c_i", out="c", to=TensorProto.FLOAT),
            _node("ReduceSum", "x", "axis", out="s", keepdims=1),
            _node("Div", "s", "c"),
        ],
        {"axis": np.array([1]), "one_i": np.int64(1)},
        ["ReduceMean"],
    ),
    "Unsqueeze(ReduceMean keepdims=0) -> keepdims=1": (
        [_node("ReduceMean", "x", "axis", out="m", keepdims=0), _node("Unsqueeze", "m", "axis")],
        {"axis": np.array([1])},
        ["ReduceMean"],
    ),
    "Reshape(ReduceMean keepdims=0, x's shape with 1) -> keepdims=1": (
        [
            _node("ReduceMean", "x", "axis", out="m", keepdims=0),
            _node("Shape", "x", out="head", start=0, end=1),
            _node("Shape", "x", out="tail", start=2),
            _node("Concat", "head", "one", "tail", out="shape", axis=0),
            _node("Reshape", "m", "shape"),
        ],
        {"axis": np.array([1]), "one": np.array([1])},
        ["ReduceMean"],
    ),
    "axes [-3] -> [1]": (
        [_node("ReduceMean", "x", "axis", keepdims=1)],
        {"axis": np.array([-3])},
        ["ReduceMean"],
    ),
    "Sub(x, Expand(m, Shape(x))) -> Sub(x, m)": (
        [
            _node("ReduceMean", "x", "axis", out="m", keepdims=1),
            _node("Shape", "x", out="shape"),
            _node("Expand", "m", "shape", out="e"),
            _node("Sub", "x", "e"),
        ],
        {"axis": np.array([1])},
        ["ReduceMean", "Sub"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_rewrite_removes_its_quirk_and_keeps_the_numbers(case):
    nodes, initializers, expected = CASES[case]
    model = _model(nodes, initializers)
    canonical = _canonical(model)
    assert [op for op in _ops(canonical) if op != "Constant"] == expected
    _same_numbers(model, canonical)


def test_negative_axes_become_the_plain_axis():
    model = _model([_node("ReduceMean", "x", "axis", keepdims=1)], {"axis": np.array([-3])})
    graph = ir.serde.deserialize_model(_canonical(model))
    (mean,) = [n for n in graph.graph if n.op_type == "ReduceMean"]
    assert reduce_axes(mean) == [1]


@pytest.mark.parametrize(
    ("nodes", "initializers"),
    [
        (  # a sum over C divided by something else: not a mean
            [_node("ReduceSum", "x", "axis", out="s", keepdims=1), _node("Div", "s", "c")],
            {"axis": np.array([1]), "c": np.float32(C - 1)},
        ),
        (  # a mean unsqueezed at another axis than it reduced
            [_node("ReduceMean", "x", "axis", out="m", keepdims=0), _node("Unsqueeze", "m", "two")],
            {"axis": np.array([1]), "two": np.array([2])},
        ),
        ([_node("Pow", "x", "p")], {"p": np.float32(-1.5)}),  # no square root
    ],
    ids=["sum-by-C-minus-1", "unsqueeze-elsewhere", "pow-minus-1.5"],
)
def test_what_is_not_the_same_computation_is_left(nodes, initializers):
    model = _model(nodes, initializers)
    canonical = _canonical(model)
    assert _ops(canonical) == _ops(model)
    _same_numbers(model, canonical)
