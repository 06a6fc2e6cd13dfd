"""The real third-party channels-first LayerNorms, built with random weights (nothing downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ln2d.export.fusion import fuse_model
from tests.onnx_helpers import export, run
from tests.third_party import install_torchvision_placeholder

pytestmark = pytest.mark.integration

install_torchvision_placeholder()


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.ndim == 1:
                p.uniform_(0.5, 1.5, generator=g)
            elif name.endswith("bias"):
                p.uniform_(-0.5, 0.5, generator=g)
    return module.eval()


def _sam():
    from segment_anything.modeling.common import LayerNorm2d

    return LayerNorm2d(16)


def _timm():
    from timm.layers import LayerNorm2d

    return LayerNorm2d(16)


def _convnext_block():
    from timm.models.convnext import ConvNeXtBlock

    return ConvNeXtBlock(16, conv_mlp=True)


def _hf():
    from transformers.models.convnext.modeling_convnext import ConvNextLayerNorm

    return ConvNextLayerNorm(16, data_format="channels_first")


# (factory, expected site status): permute + F.layer_norm exports already fused.
CASES = {
    "segment_anything.LayerNorm2d": (_sam, "fused"),
    "timm.LayerNorm2d": (_timm, "already_fused"),
    "timm.ConvNeXtBlock(conv_mlp=True)": (_convnext_block, "already_fused"),
    "transformers.ConvNextLayerNorm": (_hf, "already_fused"),
}


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("case", list(CASES))
def test_third_party_norms(case, exporter):
    factory, status = CASES[case]
    module = _randomize(factory())
    x = torch.randn(2, 16, 8, 8)
    try:
        model = export(module, x, exporter, 18)
    except Exception:
        if exporter == "dynamo":
            pytest.skip(f"torch's dynamo exporter cannot export {case} with dynamic H, W")
        raise
    fused, report = fuse_model(model)
    assert [s.status for s in report.sites] == [status], report.table()
    assert report.sites[0].affine == "weight+bias"
    x = torch.randn(3, 16, 7, 5)
    np.testing.assert_allclose(run(fused, x.numpy()), module(x).detach().numpy(), atol=2e-5)
