"""``--tune`` on a hand-built graph: every form that can lower the site is timed inside the
model, the choice and the whole model's timings are recorded, and the result is either the
tuned model or the input itself, by the rule that a form must beat it."""

from __future__ import annotations

import numpy as np

from ln2d.export.fusion import match
from ln2d.export.fusion.forms import forms_for
from ln2d.export.fusion.tune import TuneOptions, _beats, default_shape, tune
from tests.generated_graphs import GraphRecipe, build, reference
from tests.onnx_helpers import run


def test_tune_times_every_candidate_and_keeps_a_layernorm2d():
    model = build(GraphRecipe(after_conv=True), 18)
    matched = match(model)
    options = TuneOptions(((1, 3, 16, 16),), threads=1, seconds=0.02, progress=False)
    fused, report = tune(matched, options)
    (site,) = report.fused
    assert set(site.timings_ms) == set(forms_for(matched.report.fused[0]))
    assert report.tuning["result"] in ("tuned", "input kept")
    assert (fused is matched.source) == (report.tuning["result"] == "input kept")
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 4)).astype(np.float32)
    recipe = GraphRecipe(after_conv=True)
    np.testing.assert_allclose(run(fused, x), reference(recipe, model, x), rtol=1e-4, atol=1e-4)


def test_a_form_must_be_faster_at_every_shape_and_by_the_margin():
    assert _beats([0.9, 0.9], [1.0, 1.0])
    assert not _beats([0.995, 0.995], [1.0, 1.0])  # within the 1 % margin
    assert not _beats([0.5, 1.01], [1.0, 1.0])  # slower at one shape


def test_the_default_shape_is_batch_1_at_the_models_size():
    assert default_shape(build(GraphRecipe(), 18)) == (1, 5, 224, 224)
