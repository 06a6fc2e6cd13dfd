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


class ConvNeXtAttoLike(nn.Module):
    """timm's convnext_atto in shape: a 4x4 stride-4 stem and LayerNorm2d, four stages of
    depths 2/2/6/2 and widths 40/80/160/320 with a LayerNorm2d and 2x2 stride-2 Conv between
    them, conv-MLP blocks, and a head of global average pool, LayerNorm2d and Linear.
    17 LayerNorm2d in all, each in one of four contexts: after the stem Conv, after a
    depthwise Conv, after a residual Add, after the pool."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1000,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        dims: tuple[int, ...] = (40, 80, 160, 320),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, dims[0], 4, stride=4)]
        layers.append(LayerNorm2d(dims[0]))
        for stage, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
            if stage > 0:
                layers += [LayerNorm2d(dims[stage - 1]), nn.Conv2d(dims[stage - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        layers += [nn.AdaptiveAvgPool2d(1), LayerNorm2d(dims[-1]), nn.Flatten()]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@dataclass(frozen=True)
class Network:
    """A network built for its input channel count C; the grid's (N, C, S, S) is its input,
    unless the network fixes some of it."""

    name: str
    build: Callable[[int], nn.Module]
    channels: tuple[int, ...] | None = None  # fixed input channels; None: the grid's
    min_size: int = 2
    spatial: tuple[int, ...] | None = None  # fixed H = W; None: the grid's
    batches: tuple[int, ...] | None = None  # its default batch sizes; None: the grid's
    tune: bool = False  # also time what ``ln2d fuse --tune`` picks at these shapes


NETWORKS = {
    "ln2d": Network("ln2d", LayerNorm2d),
    "convnext-block": Network("convnext-block", ConvNeXtBlock),
    # The README's model: widths 32/64/128 on a 3-channel image, one 2x2 pool per stage.
    "simple": Network("simple", lambda c: SimpleLN_CNN(c, 10), channels=(3,), min_size=8),
    "convnext-atto": Network(
        "convnext-atto",
        ConvNeXtAttoLike,
        channels=(3,),
        min_size=32,
        spatial=(224,),
        batches=(1, 8),
        tune=True,
    ),
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
    return with_norm(module, lambda channels: nn.Identity())


def with_norm(module: nn.Module, make: Callable[[int], nn.Module]) -> nn.Module:
    """The same module with every LayerNorm2d replaced by ``make(channels)``, in place."""
    if isinstance(module, LayerNorm2d):
        return make(module.num_channels)
    for name, child in module.named_children():
        setattr(module, name, with_norm(child, make))
    return module
