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


def _round_trip_fused_with_epsilon(epsilon: float):
    """An fp32 graph that stores the norm's input and output in fp16 (a 1x1 Conv after it),
    fused, with the fused site's epsilon set to ``epsilon`` (the graph's is 1e-5)."""
    model = build(GraphRecipe(dtype="fp16_round_trip"), 18)
    fused, report = lower(match(model), {"ln2d_site_0": "reduce_div"})
    (eps,) = [t for t in fused.graph.initializer if t.name.startswith("ln2d_eps")]
    eps.CopyFrom(numpy_helper.from_array(np.array(epsilon, np.float32), eps.name))
    return model, fused, report


@pytest.mark.cpu_numerics
def test_a_site_within_fp32s_tolerance_passes_where_fp16_storage_magnifies_it():
    """Epsilon 2e-5 for 1e-5 moves the site's output far less than fp32's tolerance, but the
    fp16 rounding after it turns last-bit differences into whole fp16 steps at the outputs:
    the gate judges the site alone at fp32's tolerance and the outputs at fp16's, so the
    verdict no longer hangs on which values this CPU's kernels leave on a rounding edge."""
    model, fused, report = _round_trip_fused_with_epsilon(2e-5)
    verify(model, fused, report)
    numerics = report.verification["numerics"]
    assert numerics["status"] == "pass" and "each site alone" in numerics["rule"]


@pytest.mark.cpu_numerics
def test_a_site_past_fp32s_tolerance_fails_even_where_values_are_kept_in_fp16():
    """Epsilon 1e-4 for 1e-5: within fp16's tolerance at the outputs, but the site alone is off
    by more than fp32's: refused, naming the site. The guard is as strict as without fp16."""
    model, fused, report = _round_trip_fused_with_epsilon(1e-4)
    with pytest.raises(FusionError, match=r"site ln2d_site_0, form reduce_div.*the site alone"):
        verify(model, fused, report)
