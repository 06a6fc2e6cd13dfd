"""The fuser on hand-built graphs, no exporter: every target at every opset writes a valid model
in that opset that computes LayerNorm2d, and a look-alike over H and W is left alone."""

from __future__ import annotations

import numpy as np
import pytest

from ln2d.export.fusion import fuse_model
from tests.helpers import fusion_targets
from tests.onnx_helpers import run
from tests.tiny_models import C, layernorm2d, spatial_norm


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain == "")


@pytest.mark.parametrize("target", fusion_targets())
@pytest.mark.parametrize("opset", [13, 15, 17, 18, 23])
def test_hand_built_layernorm2d_fuses_in_its_own_opset(opset, target):
    model = layernorm2d(opset)
    fused, report = fuse_model(model, target)
    (site,) = report.fused
    assert site.channels == C and site.affine == "weight+bias" and _opset(fused) == opset
    one_kernel = target in ("cuda", "portable")
    assert ("LayerNormalization" in report.ops_after) == (one_kernel and opset >= 17)
    assert report.verification["onnx.checker"] == "pass"
    x = np.random.default_rng(2).standard_normal((2, C, 5, 3)).astype(np.float32) * 3 + 1
    np.testing.assert_allclose(run(fused, x), run(model, x), atol=1e-5)


def test_a_norm_over_height_and_width_is_not_fused():
    model = spatial_norm(18)
    fused, report = fuse_model(model)
    assert not report.fused and [s.status for s in report.sites] == ["rejected"]
    assert "axes [2, 3]" in report.sites[0].reason
    assert fused.SerializeToString() == model.SerializeToString()
