"""Every opset a model in the wild carries, both exporters, every target, every style: the fused
model is valid in its own opset and computes the module, and look-alikes come back untouched."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ln2d import LayerNorm2d
from ln2d.export.fusion import fuse_model
from ln2d.export.fusion.targets import TARGETS
from tests import norm_styles
from tests.helpers import fusion_targets
from tests.onnx_helpers import export, run

pytestmark = pytest.mark.integration

C = 12
OPSETS = [13, 15, 17, 18, 23]
# torch's dynamo exporter writes opset 18 and newer only.
EXPORTS = [("torchscript", o) for o in OPSETS] + [("dynamo", o) for o in OPSETS if o >= 18]


class PermuteLayerNorm(norm_styles._Affine):
    """timm's and ConvNeXt's way: permute to NHWC, F.layer_norm, permute back. From opset 17
    the exporters write an already-fused Transpose -> LayerNormalization -> Transpose."""

    def forward(self, x):
        nhwc = x.permute(0, 2, 3, 1)
        y = F.layer_norm(nhwc, self.weight.shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def ln2d_layer(channels: int, eps: float, affine: str) -> LayerNorm2d:
    """ln2d's own layer, whose eager forward is a C kernel: while exporting it is the formula."""
    norm = LayerNorm2d(channels, eps)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
    return norm


STYLES = {**norm_styles.STYLES, "permute_layernorm": PermuteLayerNorm, "ln2d": ln2d_layer}


@functools.cache
def _exported(style: str, exporter: str, opset: int) -> tuple[nn.Module, onnx.ModelProto]:
    norm = STYLES[style](C, 1e-6, "view" if style != "permute_layernorm" else "index")
    module = norm_styles.Wrapped(norm, C).eval()  # Conv -> norm: every form applies
    return module, export(module, torch.randn(2, 3, 8, 8), exporter, opset)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("target", fusion_targets())
@pytest.mark.parametrize(("exporter", "opset"), EXPORTS)
@pytest.mark.parametrize("style", list(STYLES))
def test_valid_in_its_own_opset(style, exporter, opset, target):
    module, model = _exported(style, exporter, opset)
    fused, report = fuse_model(model, target)  # the gate runs: checker, ORT, numbers
    onnx.checker.check_model(fused, full_check=True)
    assert _opset(fused) == opset
    assert report.verification["numerics"]["status"] == "pass"
    if opset < 17:
        assert "LayerNormalization" not in report.ops_after
    if style != "permute_layernorm" or opset >= 17:
        assert len(report.fused) == 1, report.table()
    x = torch.randn(3, 3, 9, 7)
    np.testing.assert_allclose(run(fused, x.numpy()), module(x).detach().numpy(), atol=2e-5)


@pytest.mark.parametrize("opset", [13, 15])
@pytest.mark.parametrize("target", ["cuda", "portable"])
def test_layernormalization_targets_say_why_below_17(opset, target):
    _, model = _exported("explicit", "torchscript", opset)
    _, report = fuse_model(model, target)
    (site,) = report.fused
    assert site.form == "reduce_moments"
    assert f"opset {opset} has no LayerNormalization" in site.why


@pytest.mark.parametrize("opset", [17, 18, 23])
def test_cpu_keeps_already_fused_sites_as_they_came(opset):
    _, model = _exported("permute_layernorm", "torchscript", opset)
    _, report = fuse_model(model, "cpu")
    (site,) = report.fused
    assert site.status == "already_fused" and site.form == "transpose_layernorm"
    assert report.ops_after == report.ops_before
    assert "kept as it came" in site.why


NEGATIVES = ["mean_spatial", "unbiased_var", "rms_norm", "groupnorm_1"]


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("name", NEGATIVES)
def test_look_alikes_come_back_untouched(name, opset):
    module = norm_styles.NEGATIVES[name](C, 1e-6).eval()
    model = export(module, torch.randn(2, C, 6, 6), "torchscript", opset)
    for target in TARGETS:
        fused, report = fuse_model(model, target)
        assert not report.fused, report.table()
        assert fused.SerializeToString() == model.SerializeToString()
