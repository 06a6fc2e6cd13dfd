"""Every fused form computes LayerNorm2d, and each target picks what its rules say, with the
reason recorded. Numbers are compared with the PyTorch module on shapes other than the export's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ln2d import LayerNorm2d
from ln2d.export.fusion import fuse_model
from ln2d.export.fusion.forms import FORMS
from tests import norm_styles
from tests.onnx_helpers import export, run

pytestmark = pytest.mark.integration

C = 12
GENERAL_FORMS = [f for f in FORMS if f != "centred_conv"]  # centred_conv needs a Conv input


def norm(affine: bool = True, eps: float = 1e-6) -> LayerNorm2d:
    module = LayerNorm2d(C, eps=eps, affine=affine).eval()
    if affine:
        with torch.no_grad():
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)
    return module


class ConvNorm(nn.Module):
    """Conv -> LayerNorm2d -> ReLU, the SimpleLN_CNN stage; ``reuse`` adds a residual, so the
    Conv output has a second consumer and the mean cannot be folded into it."""

    def __init__(self, bias: bool = True, groups: int = 1, reuse: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1, bias=bias, groups=groups)
        self.norm = norm()
        self.reuse = reuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        out = torch.relu(self.norm(y))
        return out + y if self.reuse else out


def fused_with(module: nn.Module, form: str | None = None, target: str | None = None):
    model = export(module.eval(), torch.randn(2, C, 6, 6) * 3 + 1, "dynamo", 18)
    choice = target or (lambda site: (form, "test"))
    return fuse_model(model, choice)


def check(module, fused, atol=1e-5):
    x = torch.randn(3, C, 5, 9) * 3 + 1  # not the export's shape: dynamic shapes hold
    np.testing.assert_allclose(run(fused, x.numpy()), module(x).detach().numpy(), atol=atol)


@pytest.mark.parametrize("form", GENERAL_FORMS)
@pytest.mark.parametrize(("affine", "eps"), [(True, 1e-6), (False, 1e-6), (True, 0.25)])
def test_every_form_is_a_layernorm2d(form, affine, eps):
    module = norm(affine, eps)
    fused, report = fused_with(module, form)
    assert [s.form for s in report.fused] == [form]
    assert "Pow" not in report.ops_after
    assert ("Div" in report.ops_after) == (form == "reduce_div")
    check(module, fused)


@pytest.mark.parametrize("form", [*GENERAL_FORMS, "centred_conv"])
@pytest.mark.parametrize("bias", [True, False])
def test_forms_after_a_conv(form, bias):
    module = ConvNorm(bias=bias)
    fused, report = fused_with(module, form)
    (site,) = report.fused
    assert site.centrable and site.form == form
    if form == "centred_conv":  # the mean is gone: the Conv emits centred values itself
        assert "Sub" not in report.ops_after and report.ops_after["Conv"] == 2
    check(module, fused)


@pytest.mark.parametrize(
    ("module", "why"),
    [
        (ConvNorm(groups=C), "grouped"),
        (ConvNorm(reuse=True), "second consumer"),
        (norm(), "graph input"),
    ],
)
def test_cpu_target_folds_the_mean_only_where_the_algebra_allows(module, why):
    fused, report = fused_with(module, target="cpu")
    (site,) = report.fused
    assert not site.centrable, why
    assert site.form == "reduce_div" and site.why.startswith("cpu: kept in its own arithmetic")
    check(module, fused)


def test_cpu_target_folds_the_mean_into_the_conv():
    module = ConvNorm()
    fused, report = fused_with(module, target="cpu")
    assert report.fused[0].form == "centred_conv"
    assert "centred_conv" in report.table() and "input is a Conv output" in report.table()
    check(module, fused)


@pytest.mark.parametrize("target", ["cuda", "portable"])
def test_layernormalization_targets(target):
    module = ConvNorm()
    fused, report = fused_with(module, target=target)
    assert report.ops_after["LayerNormalization"] == 1
    assert report.fused[0].why == f"{target}: one LayerNormalization kernel"
    check(module, fused)


@pytest.mark.parametrize("form", GENERAL_FORMS)
def test_fp16_keeps_fp32_statistics(form):
    module = norm().half()
    x = (torch.randn(2, C, 6, 6) * 3 + 5).half()
    model = export(module, x, "torchscript", 18)
    fused, report = fuse_model(model, lambda site: (form, "test"))
    assert report.fused[0].form == form
    got = run(fused, x.numpy())
    assert got.dtype == np.float16
    reference = module.float()(x.float()).detach().numpy()
    np.testing.assert_allclose(got.astype(np.float32), reference, atol=4e-3, rtol=4e-3)


@pytest.mark.parametrize("form", GENERAL_FORMS)
def test_a_pure_fp16_norm_gets_fp32_statistics(form):
    # Written in fp16 throughout (no casts of its own): the form casts to fp32 and back.
    module = norm_styles.Explicit(C, 1e-6, "index").half().eval()
    x = (torch.randn(2, C, 6, 6) * 3 + 5).half()
    fused, report = fuse_model(export(module, x, "torchscript", 18), lambda site: (form, "test"))
    assert report.fused[0].form == form
    got = run(fused, x.numpy())
    assert got.dtype == np.float16
    reference = module.float()(x.float()).detach().numpy()
    np.testing.assert_allclose(got.astype(np.float32), reference, atol=4e-3, rtol=4e-3)
