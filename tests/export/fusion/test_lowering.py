"""Every form, lowered by name on hand-built graphs at every opset where it exists, computes a
float64 LayerNorm2d, and names each node it wrote after its site; a form that cannot lower a
site is refused before anything is built."""

from __future__ import annotations

import numpy as np
import pytest

from ln2d import native
from ln2d.export.fusion import lower, match
from ln2d.export.fusion.forms import FORMS, exists_at
from tests.generated_graphs import GraphRecipe, build, reference
from tests.onnx_helpers import run

OPSETS = (13, 17, 18, 23)


def _cases():
    for form in FORMS:
        for opset in OPSETS:
            marks = []
            if form == "native" and not native.available():
                marks = [pytest.mark.skip(reason="ln2d.native was not compiled in this install")]
            if exists_at(form, opset):
                yield pytest.param(form, opset, marks=marks, id=f"{form}-{opset}")


@pytest.mark.parametrize(("form", "opset"), list(_cases()))
def test_each_form_computes_layernorm2d_in_its_opset(form, opset):
    recipe = GraphRecipe(after_conv=True)  # a Conv feeds the norm: centred_conv applies too
    model = build(recipe, opset)
    fused, report = lower(match(model), {"ln2d_site_0": form})
    assert [s.form for s in report.fused] == [form]
    written = [n for n in fused.graph.node if n.name.startswith("ln2d_site_0/")]
    assert written and len({n.name for n in written}) == len(written)
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 5)).astype(np.float32) * 2 + 1
    np.testing.assert_allclose(run(fused, x), reference(recipe, model, x), rtol=1e-4, atol=1e-4)


def test_a_form_that_cannot_lower_the_site_is_refused():
    matched = match(build(GraphRecipe(), 13))  # the input is no Conv output; opset 13
    for form in ("centred_conv", "transpose_layernorm"):
        with pytest.raises(ValueError, match=f"form '{form}' cannot lower ln2d_site_0"):
            lower(matched, {"ln2d_site_0": form})
