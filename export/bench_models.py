"""The networks ``ln2d bench`` times, each with and without its LayerNorm2d layers.

Every one is exported by the same path as a user's checkpoint (``module_to_onnx``: dynamic
batch, height and width), so one ONNX file per network serves every grid point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ln2d.layers import LayerNorm2d
from ln2d.model import SimpleLN_CNN


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: depthwise 7x7 -> LayerNorm2d -> 1x1 (4x) -> GELU -> 1x1, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = LayerNorm2d(channels)
        self.pwconv1 = nn.Conv2d(channels, 4 * channels, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x)))))


@dataclass(frozen=True)
class Network:
    """A network built for its input channel count C; the grid's (N, C, S, S) is its input."""

    name: str
    build: Callable[[int], nn.Module]
    channels: tuple[int, ...] | None = None  # fixed input channels; None: the grid's
    min_size: int = 2


NETWORKS = {
    "ln2d": Network("ln2d", LayerNorm2d),
    "convnext-block": Network("convnext-block", ConvNeXtBlock),
    # The README's model: widths 32/64/128 on a 3-channel image, one 2x2 pool per stage.
    "simple": Network("simple", lambda c: SimpleLN_CNN(c, 10), channels=(3,), min_size=8),
}


def build(network: Network, channels: int, seed: int = 0) -> nn.Module:
    """The network in eval mode with random but non-trivial weights (norm affine included)."""
    torch.manual_seed(seed)
    module = network.build(channels).eval()
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, LayerNorm2d):
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.5, 0.5)
    return module


def without_norms(module: nn.Module) -> nn.Module:
    """The same module with every LayerNorm2d replaced by an identity (the no-norm baseline)."""
    if isinstance(module, LayerNorm2d):
        return nn.Identity()
    for name, child in module.named_children():
        setattr(module, name, without_norms(child))
    return module
