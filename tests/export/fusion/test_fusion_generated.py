"""The matcher against channels-first LayerNorms generated from independent choices.

Hypothesis draws a recipe (tests/generated_norms.py: the mean, the variance, the
normalisation, the affine, the dtype), an exporter and an opset; the network is exported and
fused for every target the opset allows. A LayerNorm must fuse at every target with the gate
passing and compute what the module computes; a near-miss that is no LayerNorm must come back
byte for byte, and a LayerNorm scaled per pixel fuses with the scale left outside the site. The
terminal summary states the coverage: how many distinct combinations ran, and how many fused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ln2d.export.fusion import fuse_model
from tests.generated_graphs import (
    NEAR_MISSES,
    NOT_A_LAYERNORM,
    Coverage,
    fuse_at_every_target,
    generated,
    targets_at,
)
from tests.generated_norms import (
    AFFINES,
    DIMS,
    DTYPES,
    MEANS,
    NORMALISATIONS,
    STRIDES,
    VARIANCES,
    Recipe,
    Wrapped,
)
from tests.onnx_helpers import export, run

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=1)]

EXPORTS = [("torchscript", o) for o in (13, 15, 17, 18)] + [("dynamo", o) for o in (18, 23)]
recipes = st.builds(
    Recipe,
    mean=st.sampled_from(MEANS),
    dim=st.sampled_from(DIMS),
    keepdim=st.booleans(),
    variance=st.sampled_from(VARIANCES),
    normalise=st.sampled_from(NORMALISATIONS),
    affine=st.sampled_from(AFFINES),
    dtype=st.sampled_from(DTYPES),
    stride=st.sampled_from(STRIDES),
    near_miss=st.none() | st.sampled_from(NEAR_MISSES),  # half are LayerNorms
)

COVERAGE = Coverage("generated LayerNorm2d styles, exported")


@generated(examples=80)
@given(recipe=recipes, exported=st.sampled_from(EXPORTS))
def test_every_generated_layernorm_fuses_and_every_near_miss_is_left(recipe, exported):
    exporter, opset = exported
    module = Wrapped(recipe).eval()
    half = recipe.dtype == "fp16_storage"
    if half:
        module = module.half()
    x = torch.randn(2, 3, 9, 7)
    x = x.half() if half else x
    model = export(module, x, exporter, opset)
    combination = f"{recipe} {exporter}-{opset}"
    statuses = ("fused", "already_fused")
    for _, fused, _ in fuse_at_every_target(
        model, opset, combination, recipe.near_miss, COVERAGE, statuses
    ):
        if recipe.near_miss in NOT_A_LAYERNORM:
            continue
        expected = module(x).detach().float().numpy()
        got = run(fused, x.numpy()).astype(np.float32)
        np.testing.assert_allclose(got, expected, atol=_tolerance(recipe), rtol=_tolerance(recipe))


def _tolerance(recipe: Recipe) -> float:
    """fp32's with room for the exporters' summation orders; fp16's where values pass through
    it (a round trip: an fp16 step of the norm's output, through the 1x1 Conv after it)."""
    return 2e-4 if recipe.dtype == "fp32" else 2e-2


# The reported cases. At every opset each exporter writes: torch.var_mean with keepdim=True and
# (1, C, 1, 1) parameters (dynamo centred the input by two means), and fp16 storage with fp32
# statistics (the portable target's gate refused it at opsets 17 and 18). At the opsets they
# were reported at: the same var_mean after a strided Conv (the mean's Expand then reads sizes
# computed from the input's, which no rule could prove), and an fp32 network storing the norm's
# input and output in fp16 (the gate's verdict hung on which values this CPU rounded the other
# way).
EVERY_OPSET = [("torchscript", o) for o in range(13, 21)] + [("dynamo", o) for o in range(18, 24)]
REPORTED_AT = [("torchscript", 17), ("torchscript", 18), ("dynamo", 18), ("dynamo", 23)]
VAR_MEAN = {"mean": "var_mean", "normalise": "mul_rsqrt", "affine": "param_1c11"}
REPORTED = {
    "var_mean_keepdim": (Recipe(**VAR_MEAN), EVERY_OPSET),
    "fp16_storage": (Recipe(dtype="fp16_storage"), EVERY_OPSET),
    "var_mean_after_a_strided_conv": (Recipe(**VAR_MEAN, stride=2), REPORTED_AT),
    "fp16_round_trip": (Recipe(dtype="fp16_round_trip"), REPORTED_AT),
}


@pytest.mark.parametrize(
    ("case", "exported"),
    [(case, e) for case, (_, exports) in REPORTED.items() for e in exports],
    ids=lambda v: v if isinstance(v, str) else f"{v[0]}-{v[1]}",
)
def test_the_reported_cases_fuse_at_every_target_and_opset(case, exported):
    recipe = REPORTED[case][0]
    half = recipe.dtype == "fp16_storage"
    module = Wrapped(recipe).eval()
    module = module.half() if half else module
    x = torch.randn(2, 3, 9, 7)
    x = x.half() if half else x
    model = export(module, x, *exported)
    expected = module(x).detach().float().numpy()
    for target in targets_at(exported[1]):
        fused, report = fuse_model(model, target)
        assert [s.status for s in report.fused] == ["fused"], f"{target}: {report.table()}"
        got = run(fused, x.numpy()).astype(np.float32)
        tolerance = _tolerance(recipe)
        np.testing.assert_allclose(got, expected, atol=tolerance, rtol=tolerance, err_msg=target)
