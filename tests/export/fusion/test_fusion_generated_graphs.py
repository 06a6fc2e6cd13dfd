"""The matcher against channels-first LayerNorms written as ONNX graphs from independent choices
(tests/generated_graphs.py), no exporter: the fast slice of test_fusion_generated.py.

Each drawn graph is fused for every target its opset allows. A LayerNorm must fuse with the
gate passing and compute what a float64 LayerNorm computes; a near-miss that is no LayerNorm
must come back byte for byte, with a rejection that names the node where it diverged.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ln2d.export.fusion import fuse_model
from tests.generated_graphs import (
    AFFINES,
    AXES,
    DTYPES,
    MEANS,
    NEAR_MISSES,
    NORMALISATIONS,
    NOT_A_LAYERNORM,
    PARAMETER_SHAPES,
    RESHAPE_OPSET,
    VARIANCES,
    Coverage,
    GraphRecipe,
    build,
    fuse_at_every_target,
    generated,
    reference,
)
from tests.onnx_helpers import run

OPSETS = (13, 15, 17, 18, 21, 23)
COVERAGE = Coverage("generated LayerNorm2d styles, hand-built graphs")

recipes = st.builds(
    GraphRecipe,
    mean=st.sampled_from(MEANS),
    axis=st.sampled_from(AXES),
    variance=st.sampled_from(VARIANCES),
    normalise=st.sampled_from(NORMALISATIONS),
    affine=st.sampled_from(AFFINES),
    parameters=st.sampled_from(PARAMETER_SHAPES),
    dtype=st.sampled_from(DTYPES),
    after_conv=st.booleans(),
    near_miss=st.none() | st.sampled_from(NEAR_MISSES),  # half are LayerNorms
)


@generated(examples=60)
@given(recipe=recipes, opset=st.sampled_from(OPSETS))
def test_every_generated_graph_fuses_and_every_near_miss_is_left(recipe, opset):
    assume(recipe.mean != "reshape" or opset >= RESHAPE_OPSET)
    model = build(recipe, opset)
    half = recipe.dtype == "fp16_storage"
    x = np.random.default_rng(3).standard_normal((2, 3 if recipe.after_conv else 5, 6, 4))
    x = (x * 2 + 0.5).astype(np.float16 if half else np.float32)
    combination = f"{recipe} opset {opset}"
    for target, fused, report in fuse_at_every_target(
        model, opset, combination, recipe.near_miss, COVERAGE
    ):
        where = f"{combination} {target}: {report.table()}"
        if recipe.near_miss in NOT_A_LAYERNORM:
            assert all("node '" in site.reason for site in report.rejected), where
            continue
        # fp16's where the values pass through fp16 (after a round trip, an fp16 step of the
        # norm's output times the 1x1 Conv's gain: 2e-2 holds it).
        tolerance = {"fp32": 1e-4, "fp16_storage": 1e-2, "fp16_round_trip": 2e-2}[recipe.dtype]
        np.testing.assert_allclose(
            run(fused, x).astype(np.float64),
            reference(recipe, model, x),
            atol=tolerance,
            rtol=tolerance,
            err_msg=where,
        )


@pytest.mark.parametrize(
    ("near_miss", "diverges_at"),
    [
        ("unbiased", "ReduceSum"),  # sum of squares over C - 1: no mean of the square
        ("eps_outside_sqrt", "Sqrt"),  # the root comes before + eps
        ("eps_input", "Add"),  # + eps, but eps is no constant
        ("other_axis", "ReduceMean"),  # the mean is over H
        ("rms", "ReduceMean"),  # a mean of squares nothing centred
    ],
)
@pytest.mark.parametrize("variance", ["mul", "second_moment_max"])
def test_a_rejection_names_the_node_where_the_pattern_diverged(near_miss, diverges_at, variance):
    model = build(GraphRecipe(variance=variance, near_miss=near_miss), 18)
    _, report = fuse_model(model)
    (site,) = report.rejected
    named = re.search(r"node '(\w+)' \((\w+), output '(\w+)'\)", site.reason)
    assert named, site.reason
    node = next(n for n in model.graph.node if n.name == named[1])
    assert (node.op_type, named[2], list(node.output)) == (diverges_at, diverges_at, [named[3]])
