"""The fuser against every LayerNorm2d style, both exporters, opsets 17 and 18, and look-alikes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from ln2d.export.fusion import fuse_model
from tests import norm_styles
from tests.onnx_helpers import EXPORTERS, export, initializers, layernorm_nodes, run

pytestmark = pytest.mark.integration

C = 12


def _check_fused(module, fused, report, eps, sites=1):
    assert report.counts() == {"fused": sites}, report.table()
    onnx.checker.check_model(fused, full_check=True)
    assert "ReduceMean" not in report.ops_after and report.ops_after["LayerNormalization"] == sites
    # Dynamic shapes preserved: a batch and spatial size other than the export's.
    x = torch.randn(3, C, 5, 9)
    np.testing.assert_allclose(run(fused, x.numpy()), module(x).detach().numpy(), atol=1e-5)
    for node in layernorm_nodes(fused):
        (eps_attr,) = [a.f for a in node.attribute if a.name == "epsilon"]
        assert eps_attr == np.float32(eps)  # copied exactly, not rounded further


@pytest.mark.parametrize(("exporter", "opset"), EXPORTERS)
@pytest.mark.parametrize("affine", norm_styles.AFFINES)
@pytest.mark.parametrize("style", list(norm_styles.STYLES))
def test_every_style_fuses_exactly(style, affine, exporter, opset):
    module = norm_styles.STYLES[style](C, 1e-6, affine).eval()
    model = export(module, torch.randn(2, C, 6, 6), exporter, opset)
    fused, report = fuse_model(model, "portable")
    _check_fused(module, fused, report, 1e-6)
    (site,) = report.sites
    assert site.channels == C and site.affine == ("none" if affine is None else "weight+bias")
    if affine is not None:
        # weight != bias and both come through bit-exact, in the right slots.
        (node,) = layernorm_nodes(fused)
        values = initializers(fused)
        weight, bias = values[node.input[1]], values[node.input[2]]
        np.testing.assert_array_equal(weight, module.weight.detach().numpy().reshape(C))
        np.testing.assert_array_equal(bias, module.bias.detach().numpy().reshape(C))


@pytest.mark.parametrize("eps", [1e-5, 1e-3, 0.25])
def test_eps_is_copied(eps):
    module = norm_styles.Explicit(C, eps, "index").eval()
    fused, report = fuse_model(export(module, torch.randn(2, C, 6, 6), "dynamo", 18), "portable")
    _check_fused(module, fused, report, eps)
    assert report.sites[0].epsilon == float(np.float32(eps))


def test_norm_between_convolutions_keeps_the_rest():
    module = norm_styles.Wrapped(norm_styles.VarMeanRsqrt(C, 1e-6, "view"), C).eval()
    model = export(module, torch.randn(2, 3, 8, 8), "dynamo", 18)
    fused, report = fuse_model(model, "portable")
    assert report.counts() == {"fused": 1}
    assert report.ops_after["Conv"] == 2
    x = torch.randn(2, 3, 11, 7)
    np.testing.assert_allclose(run(fused, x.numpy()), module(x).detach().numpy(), atol=1e-5)


REJECTED_WITH_REASON = {
    "mean_all_axes": "axes [1, 2, 3]",
    "mean_spatial": "axes [2, 3]",
    "unbiased_var": "(Mul, output",  # the rescale by C / (C - 1), where + eps was expected
    "rms_norm": "RMS norm",
}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", list(norm_styles.NEGATIVES))
def test_look_alikes_are_not_fused(name, exporter):
    module = norm_styles.NEGATIVES[name](C, 1e-6).eval()
    x = torch.randn(2, C, 6, 6)
    dynamic = name != "layernorm_chw"  # normalises over a fixed (C, H, W)
    try:
        model = export(module, x, exporter, 18, dynamic=dynamic)
    except Exception:
        pytest.skip(f"torch's {exporter} exporter cannot export {name}")
    fused, report = fuse_model(model)
    if name == "runtime_weight":
        # The normalisation itself is a LayerNorm2d; the input-dependent scale stays outside.
        assert report.counts() == {"fused": 1} and report.sites[0].affine == "none"
        assert "Mul" in report.ops_after
    else:
        assert not report.fused, report.table()
        assert "LayerNormalization" not in report.ops_after or name == "layernorm_chw"
    if name in REJECTED_WITH_REASON:
        assert [s.status for s in report.sites] == ["rejected"]
        assert REJECTED_WITH_REASON[name] in report.sites[0].reason
    np.testing.assert_allclose(run(fused, x.numpy()), module(x).detach().numpy(), atol=1e-5)


def test_scalar_scale_is_not_absorbed():
    module = norm_styles.ScalarWeight(C, 1e-6, None).eval()
    fused, report = fuse_model(export(module, torch.randn(2, C, 6, 6), "dynamo", 18))
    assert report.sites[0].affine == "none"
    x = torch.randn(1, C, 4, 4)
    np.testing.assert_allclose(run(fused, x.numpy()), module(x).detach().numpy(), atol=1e-5)


def test_fp16_model_keeps_fp32_statistics():
    from ln2d import LayerNorm2d

    module = LayerNorm2d(C).half().eval()
    with torch.no_grad():
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(2, C, 6, 6) * 3 + 5).half()
    fused, report = fuse_model(export(module, x, "torchscript", 18), "portable")
    assert report.counts() == {"fused": 1}
    (node,) = layernorm_nodes(fused)
    assert [a.i for a in node.attribute if a.name == "stash_type"] == [1]
    # The Casts around the fp32 region stay: LayerNormalization runs on fp32 data.
    assert report.ops_after["Cast"] == 2
    reference = module.float()(x.float()).detach().double().numpy()
    got = run(fused, x.numpy())
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), reference, atol=4e-3, rtol=4e-3)


def test_fusing_twice_counts_and_keeps_the_fused_form():
    module = norm_styles.Explicit(C, 1e-6, "index").eval()
    once, _ = fuse_model(export(module, torch.randn(2, C, 6, 6), "dynamo", 18), "portable")
    twice, report = fuse_model(once)
    assert report.counts() == {"already_fused": 1}
    assert report.ops_after == report.ops_before
    x = np.random.default_rng(0).standard_normal((2, C, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(twice, x), run(once, x))


def test_fusing_leaves_the_input_model_untouched():
    module = norm_styles.Wrapped(norm_styles.Explicit(C, 1e-6, "index"), C).eval()
    model = export(module, torch.randn(2, 3, 8, 8), "torchscript", 17)
    pristine = model.SerializeToString()
    fuse_model(model)
    assert model.SerializeToString() == pristine


def test_report_lists_histograms_and_sites():
    module = norm_styles.Wrapped(norm_styles.Explicit(C, 1e-6, "index"), C).eval()
    _, report = fuse_model(export(module, torch.randn(2, 3, 8, 8), "torchscript", 17), "portable")
    data = report.to_dict()
    assert data["summary"]["fused"] == 1
    assert data["ops_before"]["ReduceMean"] == 2 and "ReduceMean" not in data["ops_after"]
    assert data["summary"]["nodes_after"] < data["summary"]["nodes_before"]
    (site,) = data["sites"]
    assert site["style"] == "centred/div" and site["form"] == "transpose_layernorm"
