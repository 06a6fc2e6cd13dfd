"""Ways people write a channels-first LayerNorm, and look-alikes that must not be fused.

Each module takes (N, C, H, W). Weights are uniform(0.5, 1.5) and biases uniform(-0.5, 0.5), so a
swapped or copied tensor in the fused graph shows up as a large output error.
"""

from __future__ import annotations

import torch
from torch import nn


class _Affine(nn.Module):
    def __init__(self, channels: int, eps: float, affine: str | None, seed: int = 0) -> None:
        super().__init__()
        self.eps = eps
        self.affine = affine
        g = torch.Generator().manual_seed(seed)
        shape = (channels, 1, 1) if affine == "broadcast" else (channels,)
        if affine:
            self.weight = nn.Parameter(torch.empty(shape).uniform_(0.5, 1.5, generator=g))
            self.bias = nn.Parameter(torch.empty(shape).uniform_(-0.5, 0.5, generator=g))

    def scale_shift(self, x: torch.Tensor) -> torch.Tensor:
        if self.affine == "index":  # w[:, None, None] * x + b[:, None, None]
            return self.weight[:, None, None] * x + self.bias[:, None, None]
        if self.affine == "broadcast":  # parameters stored as (C, 1, 1): x * w + b
            return x * self.weight + self.bias
        if self.affine == "view":
            return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return x


class Explicit(_Affine):
    """Style 1: LayerNorm2d's docstring formula (segment-anything writes exactly this)."""

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.scale_shift((x - u) / torch.sqrt(s + self.eps))


class VarMeanRsqrt(_Affine):
    """Style 2: torch.var_mean and rsqrt."""

    def forward(self, x):
        s, u = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return self.scale_shift((x - u) * torch.rsqrt(s + self.eps))


class SecondMoment(_Affine):
    """Style 3: E[x^2] - E[x]^2, clamped at 0, and rsqrt."""

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = ((x * x).mean(1, keepdim=True) - u * u).clamp(min=0)
        return self.scale_shift((x - u) * torch.rsqrt(s + self.eps))


class SquareByMul(_Affine):
    """Style 4: Mul(d, d) for the square and a multiply by the reciprocal."""

    def forward(self, x):
        d = x - x.mean(1, keepdim=True)
        s = (d * d).mean(1, keepdim=True)
        return self.scale_shift(d * (1.0 / torch.sqrt(s + self.eps)))


STYLES = {
    "explicit": Explicit,
    "var_mean_rsqrt": VarMeanRsqrt,
    "second_moment": SecondMoment,
    "square_by_mul": SquareByMul,
}
AFFINES = ["index", "broadcast", "view", None]


class Wrapped(nn.Module):
    """A norm between two convolutions, as it sits in a real network."""

    def __init__(self, norm: nn.Module, channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        self.norm = norm
        self.conv_out = nn.Conv2d(channels, 4, 1)

    def forward(self, x):
        return self.conv_out(torch.relu(self.norm(self.conv_in(x))))


# Look-alikes: each must be left alone by the fuser.
class MeanOverAllAxes(_Affine):
    def forward(self, x):
        u = x.mean((1, 2, 3), keepdim=True)
        s = (x - u).pow(2).mean((1, 2, 3), keepdim=True)
        return (x - u) / torch.sqrt(s + self.eps)


class MeanOverSpatial(_Affine):
    def forward(self, x):
        u = x.mean((2, 3), keepdim=True)
        s = (x - u).pow(2).mean((2, 3), keepdim=True)
        return (x - u) / torch.sqrt(s + self.eps)


class UnbiasedVariance(_Affine):
    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = x.var(1, unbiased=True, keepdim=True)
        return (x - u) / torch.sqrt(s + self.eps)


class RMSNorm2d(_Affine):
    def forward(self, x):
        s = x.pow(2).mean(1, keepdim=True)
        return self.scale_shift(x / torch.sqrt(s + self.eps))


class RuntimeWeight(nn.Module):
    """The 'weight' is computed from the input: not a constant of C elements."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        y = (x - u) / torch.sqrt(s + self.eps)
        return y * x.amax((2, 3), keepdim=True)


class ScalarWeight(_Affine):
    """A single scalar scale: not per-channel."""

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return (x - u) / torch.sqrt(s + self.eps) * 1.7


NEGATIVES = {
    "groupnorm_1": lambda c, eps: nn.GroupNorm(1, c, eps=eps),
    "instancenorm": lambda c, eps: nn.InstanceNorm2d(c, eps=eps, affine=True),
    "layernorm_chw": lambda c, eps: nn.LayerNorm([c, 6, 6], eps=eps),
    "batchnorm": lambda c, eps: nn.BatchNorm2d(c, eps=eps),
    "mean_all_axes": lambda c, eps: MeanOverAllAxes(c, eps, None),
    "mean_spatial": lambda c, eps: MeanOverSpatial(c, eps, None),
    "unbiased_var": lambda c, eps: UnbiasedVariance(c, eps, None),
    "rms_norm": lambda c, eps: RMSNorm2d(c, eps, "index"),
    "runtime_weight": RuntimeWeight,
}
