"""Each reason a candidate site is refused, on hand-built graphs: the report says why, names
the node, and the graph comes back byte for byte."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from ln2d.export.fusion import fuse_model
from tests.generated_graphs import GraphRecipe, build


def _rejected(model: onnx.ModelProto) -> str:
    fused, report = fuse_model(model)
    assert fused.SerializeToString() == model.SerializeToString()
    (site,) = report.rejected
    assert not report.fused
    return site.reason


@pytest.mark.parametrize(
    ("near_miss", "says"),
    [
        ("unbiased", "expected the mean of (x - mean)^2 over axis 1"),
        ("eps_outside_sqrt", "expected variance + eps"),
        ("eps_input", "eps is not a constant scalar"),
        ("other_axis", "reduces over axes [2], not the channel axis 1 alone"),
        ("rms", "an RMS norm"),
    ],
)
def test_each_near_miss_gets_its_reason(near_miss, says):
    assert says in _rejected(build(GraphRecipe(near_miss=near_miss), 18))


def test_a_channel_count_unknown_until_run_time_is_refused():
    model = build(GraphRecipe(affine="none"), 18)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[1].dim_param = "c"
    assert "channel count is not static" in _rejected(model)


def test_an_epsilon_float32_cannot_hold_is_refused_rather_than_rounded():
    # A double-precision model whose eps is 0.1: no float32 is exactly 0.1.
    model = build(GraphRecipe(affine="none"), 18)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        if array.dtype == np.float32:
            array = (
                np.full_like(array, 0.1, np.float64) if array.size == 1 and array < 1e-4 else array
            )
            tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float64), tensor.name))
    onnx.checker.check_model(model, full_check=True)
    assert "epsilon 0.1 is not exactly representable as float32" in _rejected(model)
