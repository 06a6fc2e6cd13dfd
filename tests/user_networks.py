"""Networks as users write them, each built by a factory the way ``ln2d export --model`` calls
it (``tests.user_networks:convnext_like``): ln2d, timm, segment-anything and inline styles of
channels-first LayerNorm, none of them a SimpleLN_CNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ln2d import LayerNorm2d


class SamLayerNorm2d(nn.Module):
    """segment-anything's LayerNorm2d, as its repository writes it."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PermuteLayerNorm2d(nn.LayerNorm):
    """timm's way: permute to NHWC, F.layer_norm over C, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias)
        return y.permute(0, 3, 1, 2)


class InlineBlock(nn.Module):
    """A ConvNeXt block whose norm is written inline in its own forward (no norm module)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(dim, 1, 1))
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x)
        mean = y.mean(1, keepdim=True)
        var = (y - mean).pow(2).mean(1, keepdim=True)
        y = (y - mean) / torch.sqrt(var + 1e-6) * self.gamma + self.beta
        return x + self.mlp(y)


class PermuteBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = PermuteLayerNorm2d(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(self.dwconv(x)))


class ConvNeXtLike(nn.Module):
    """Stem and downsample LayerNorm2d (ln2d's), inline and permute-style blocks, 10 classes."""

    def __init__(self, dims: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), LayerNorm2d(dims[0]))
        self.stages = nn.Sequential(
            nn.Sequential(InlineBlock(dims[0]), PermuteBlock(dims[0])),
            nn.Sequential(
                nn.Sequential(LayerNorm2d(dims[0]), nn.Conv2d(dims[0], dims[1], 2, stride=2)),
                InlineBlock(dims[1]),
                PermuteBlock(dims[1]),
            ),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dims[1], 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class UNet(nn.Module):
    """A two-level U-Net with LayerNorm2d in encoder and decoder: an image in, a mask out."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), LayerNorm2d(width), nn.ReLU())
        self.bottom = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1), LayerNorm2d(2 * width), nn.ReLU()
        )
        self.up = nn.Sequential(
            nn.Conv2d(3 * width, width, 3, padding=1), SamLayerNorm2d(width), nn.ReLU()
        )
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down(x)
        deep = F.interpolate(self.bottom(F.max_pool2d(skip, 2)), scale_factor=2.0)
        return self.out(self.up(torch.cat([skip, deep], 1)))


class SamNet(nn.Module):
    """A small classifier on segment-anything's LayerNorm2d."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), SamLayerNorm2d(16), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), SamLayerNorm2d(32), nn.GELU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class VarMeanLayerNorm2d(nn.Module):
    """torch.var_mean over the channels, parameters shaped (1, C, 1, 1)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, u = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
        return (x - u) * torch.rsqrt(v + 1e-5) * self.gamma + self.beta


class MixedStyles(nn.Module):
    """Three styles in one ConvNeXt-like network, each after a strided Conv at least once:
    permute + nn.LayerNorm, segment-anything's inline one, and var_mean (issue 38's network)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, stride=4)
        self.stem_norm = PermuteLayerNorm2d(32, eps=1e-6)
        self.dwconv = nn.Conv2d(32, 32, 7, padding=3, groups=32)
        self.block_norm = SamLayerNorm2d(32)
        self.pwconv = nn.Conv2d(32, 64, 1)
        self.var_mean_norm = VarMeanLayerNorm2d(64)
        self.down = nn.Conv2d(64, 64, 2, stride=2)
        self.down_norm = SamLayerNorm2d(64)
        self.last_norm = PermuteLayerNorm2d(64, eps=1e-6)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(x))
        x = x + self.block_norm(self.dwconv(x))
        x = self.var_mean_norm(self.pwconv(x))
        x = self.last_norm(self.down_norm(self.down(x)))
        return self.head(x.mean((2, 3)))


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: the dynamo exporter refuses to guess the
    branch, TorchScript's tracer records the one it takes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = LayerNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x))
        return y if float(y.abs().mean()) >= 0 else -y


def convnext_like() -> nn.Module:
    return ConvNeXtLike()


def unet() -> nn.Module:
    return UNet()


def sam_net() -> nn.Module:
    return SamNet()


def mixed_styles() -> nn.Module:
    return MixedStyles()


def trained_like(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights with norm affines far from 1 and 0, so a swapped or lost one shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.ndim == 1 or name.endswith(("gamma", "beta")):
                parameter.copy_(torch.empty_like(parameter).uniform_(0.5, 1.5, generator=generator))
    return module.eval()
