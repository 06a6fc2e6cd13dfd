"""SimpleLN_CNN: shapes for every norm and every input size the architecture admits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ln2d import LayerNorm2d, SimpleLN_CNN
from ln2d.model import NORMS, ModelConfig

NORM_TYPES = {
    "layernorm2d": LayerNorm2d,
    "batchnorm": nn.BatchNorm2d,
    "groupnorm": nn.GroupNorm,
    "instancenorm": nn.InstanceNorm2d,
    "none": nn.Identity,
}


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize(("batch", "size"), [(1, 8), (3, 9), (2, 32), (1, 45)])
def test_output_shape_for_every_norm(norm, batch, size):
    model = SimpleLN_CNN(in_channels=3, num_classes=7, norm=norm).eval()
    assert isinstance(model.features[0][1], NORM_TYPES[norm])
    out = model(torch.randn(batch, 3, size, size + 3))
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()


def test_min_input_size_follows_depth():
    model = SimpleLN_CNN(in_channels=1, widths=(8, 8, 8, 8)).eval()
    assert model.config.min_input_size == 16
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 10)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 1, 15, 15))


def test_layernorm2d_model_is_batch_independent_in_train_mode():
    # Unlike BatchNorm, train-mode outputs of one sample do not depend on the rest of the batch.
    model = SimpleLN_CNN(in_channels=1, widths=(8, 16)).train()
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(model(x)[:1], model(x[:1]), atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_validation():
    config = ModelConfig(1, 10, (16, 32), "groupnorm", 1e-5)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown norm"):
        ModelConfig(norm="rmsnorm")
    with pytest.raises(ValueError, match="widths"):
        ModelConfig(widths=())
