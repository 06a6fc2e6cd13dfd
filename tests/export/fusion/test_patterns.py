"""The LayerNorm2d patterns on hand-built graphs: each way the statistics and the division are
written becomes one placeholder with the right style and epsilon, and a following per-channel
affine is absorbed only when it is a constant of C elements in the norm's dtype."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ln2d.export.fusion import match
from tests.generated_graphs import EPS, GraphRecipe, build

STYLES = {
    "centred/div": GraphRecipe(variance="mul", normalise="div_sqrt"),
    "centred/mul_reciprocal": GraphRecipe(variance="pow", normalise="mul_reciprocal_sqrt"),
    "second_moment/div": GraphRecipe(variance="second_moment", normalise="div_sqrt"),
    "second_moment/mul_reciprocal": GraphRecipe(
        variance="second_moment_clip", normalise="pow_minus_half"
    ),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_each_style_becomes_one_placeholder(style):
    (site,) = match(build(STYLES[style], 18)).report.fused
    assert (site.style, site.epsilon, site.channels) == (style, pytest.approx(EPS), 5)


@pytest.mark.parametrize(
    ("affine", "absorbed"),
    [("weight+bias", "weight+bias"), ("weight", "weight"), ("bias", "weight+bias"),
     ("none", "none"), ("weight_first", "weight+bias")],
)  # fmt: skip
@pytest.mark.parametrize("parameters", ["c11", "1c11"])
def test_a_per_channel_affine_is_absorbed(affine, absorbed, parameters):
    # A bias alone is absorbed with a weight of ones beside it (the placeholder's inputs).
    recipe = GraphRecipe(affine=affine, parameters=parameters)
    (site,) = match(build(recipe, 18)).report.fused
    assert site.affine == absorbed
    assert "Mul" not in _ops(match(build(recipe, 18)).placeholders) or affine == "none"


def test_an_already_fused_site_is_recognised_and_kept():
    model = _transpose_layernorm()
    (site,) = match(model).report.fused
    assert (site.status, site.style, site.original) == (
        "already_fused",
        "transpose_layernormalization",
        "transpose_layernorm",
    )


@pytest.mark.parametrize(
    "scale",
    [np.float32(2.0), np.ones((1, 5, 2, 1), np.float32)],
    ids=["scalar", "per-pixel-shape"],
)
def test_a_scale_that_is_no_per_channel_constant_stays_outside(scale):
    model = build(GraphRecipe(affine="none"), 18)
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(scale), "odd_scale"))
    model.graph.node[-1].output[0] = "norm"
    model.graph.node.append(helper.make_node("Mul", ["norm", "odd_scale"], ["y"]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None))
    matched = match(model)
    assert matched.report.fused[0].affine == "none"
    assert "Mul" in _ops(matched.placeholders)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _transpose_layernorm() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["nhwc", "w", "b"], ["ln"], axis=-1, epsilon=1e-6),
        helper.make_node("Transpose", ["ln"], ["y"], perm=[0, 3, 1, 2]),
    ]
    inits = [numpy_helper.from_array(np.ones(5, np.float32), "w"),
             numpy_helper.from_array(np.zeros(5, np.float32), "b")]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "timm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5, "h", "w"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model
