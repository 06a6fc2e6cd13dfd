"""The gate on hand-built graphs: a fused model that computes the same passes and records
each step; one that computes something else, or is no valid model, raises FusionError naming
the step and the site."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ln2d.export.fusion import FusionError, lower, match, verify
from tests.generated_graphs import GraphRecipe, build


def _fused():
    model = build(GraphRecipe(), 18)
    fused, report = lower(match(model), {"ln2d_site_0": "reduce_div"})
    return model, fused, report


@pytest.mark.cpu_numerics
def test_a_faithful_fusion_passes_every_step():
    model, fused, report = _fused()
    verify(model, fused, report)
    steps = report.verification
    assert steps["onnx.checker"] == steps["onnxruntime"] == "pass"
    assert steps["numerics"]["status"] == "pass" and len(steps["numerics"]["shapes"]) == 2


@pytest.mark.cpu_numerics
def test_a_fusion_that_computes_something_else_names_the_site():
    model, fused, report = _fused()
    (eps,) = [t for t in fused.graph.initializer if t.name.startswith("ln2d_eps")]
    eps.CopyFrom(numpy_helper.from_array(np.array(0.5, np.float32), eps.name))
    with pytest.raises(FusionError, match=r"failed numerics \(site ln2d_site_0, form reduce_div\)"):
        verify(model, fused, report)


def test_an_invalid_fused_model_fails_the_checker_step():
    model, fused, report = _fused()
    broken = onnx.ModelProto()
    broken.CopyFrom(fused)
    broken.graph.node[-1].input[0] = "nowhere"
    with pytest.raises(FusionError, match=r"failed onnx\.checker"):
        verify(model, broken, report)
