"""Channels-first LayerNorms built from independent choices, and near-misses that are not one.

A ``Recipe`` names one way to write each part of the norm: the mean, the variance, the
normalisation, the affine, the storage dtype. ``GeneratedNorm(recipe, C)`` computes exactly
that, so a generator (Hypothesis, in test_fusion_generated.py) can draw styles nobody listed.
A ``near_miss`` recipe computes something that is *not* a biased-variance LayerNorm over C with
a per-channel affine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MEANS = ("mean", "sum_div", "var_mean")
DIMS = ("1", "-3", "(1,)")
VARIANCES = (
    "pow", "mul", "square", "second_moment", "second_moment_clamp", "var", "correction",
    "var_mean",
)  # fmt: skip
NORMALISATIONS = ("div_sqrt", "mul_rsqrt", "mul_reciprocal_sqrt", "pow_minus_half")
AFFINES = (
    "index", "view", "reshape", "param_1c11", "weight_only", "bias_only", "none", "weight_last",
)  # fmt: skip
# fp16_round_trip: an fp32 network that stores the norm's input and output in fp16, the norm
# computing in fp32 (Cast to fp16 and back on each side).
DTYPES = ("fp32", "fp16_storage", "fp16_round_trip")
# The Conv before the norm: size-preserving, or strided (a ConvNeXt stem or downsampling layer),
# where the exporter computes the norm's spatial size from the input's (``height // 2``).
STRIDES = (1, 2)
# ``near_miss`` takes the values of tests/generated_graphs.py's NEAR_MISSES: both generators
# build the same look-alikes.


@dataclass(frozen=True)
class Recipe:
    mean: str = "mean"
    dim: str = "1"
    keepdim: bool = True  # else keepdim=False and unsqueeze(1) back
    variance: str = "pow"
    normalise: str = "div_sqrt"
    affine: str = "index"
    dtype: str = "fp32"
    stride: int = 1
    near_miss: str | None = None

    def __str__(self) -> str:
        parts = [self.mean, f"dim={self.dim}", "keepdim" if self.keepdim else "unsqueeze"]
        parts += [self.variance, self.normalise, self.affine, self.dtype, f"stride={self.stride}"]
        return "/".join(parts + ([f"NEAR-MISS:{self.near_miss}"] if self.near_miss else []))


class GeneratedNorm(nn.Module):
    def __init__(self, recipe: Recipe, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.recipe, self.eps = recipe, eps
        g = torch.Generator().manual_seed(0)
        shape = (1, channels, 1, 1) if recipe.affine == "param_1c11" else (channels,)
        self.weight = nn.Parameter(torch.empty(shape).uniform_(0.5, 1.5, generator=g))
        self.bias = nn.Parameter(torch.empty(shape).uniform_(-0.5, 0.5, generator=g))

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        storage = x.dtype
        if self.recipe.dtype != "fp32":
            x = x.float()
        y = self._affine(self._normalised(x))
        return y.to(storage)

    # ---- the parts ----

    def _axis(self) -> int:
        return 2 if self.recipe.near_miss == "other_axis" else 1

    def _dim(self):
        axis = self._axis()
        return {"1": axis, "-3": axis - 4, "(1,)": (axis,)}[self.recipe.dim]

    def _reduce(self, v: torch.Tensor, how: str = "mean") -> torch.Tensor:
        """The channel mean of v, written the recipe's way."""
        r, dim = self.recipe, self._dim()
        if how == "sum_div":
            out = v.sum(dim, keepdim=r.keepdim) / v.shape[1]
        else:
            out = v.mean(dim, keepdim=r.keepdim)
        return out if r.keepdim else out.unsqueeze(self._axis())

    def _var_mean(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.recipe
        var, mean = torch.var_mean(x, dim=self._dim(), keepdim=r.keepdim, unbiased=False)
        if r.keepdim:
            return var, mean
        return var.unsqueeze(self._axis()), mean.unsqueeze(self._axis())

    def _statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.recipe
        if r.near_miss == "rms":
            return torch.zeros_like(x[:, :1]), self._reduce(x * x)
        if r.near_miss == "unbiased":
            return self._reduce(x), x.var(self._dim(), keepdim=True, unbiased=True)
        if r.mean == "var_mean":
            var, mean = self._var_mean(x)
            return mean, var
        mean = self._reduce(x, r.mean)
        d = x - mean
        if r.variance == "pow":
            var = self._reduce(d.pow(2))
        elif r.variance == "mul":
            var = self._reduce(d * d)
        elif r.variance == "square":
            var = self._reduce(d.square())
        elif r.variance in ("second_moment", "second_moment_clamp"):
            var = self._reduce(x * x) - mean * mean
            if r.variance == "second_moment_clamp":
                var = var.clamp(min=0)
        elif r.variance == "var":
            var = x.var(self._dim(), keepdim=True, unbiased=False)
        elif r.variance == "correction":
            var = x.var(self._dim(), keepdim=True, correction=0)
        else:  # var_mean for the variance alone
            var = self._var_mean(x)[0]
        return mean, var

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        r = self.recipe
        mean, var = self._statistics(x)
        d = x - mean
        eps = self.eps
        if r.near_miss == "eps_input":
            # computed in the graph from the input, not a constant
            eps = x.detach().abs().amax(dim=(1, 2, 3), keepdim=True) * 0 + self.eps
        if r.near_miss == "eps_outside_sqrt":
            return d / (torch.sqrt(var) + eps)
        if r.normalise == "div_sqrt":
            return d / torch.sqrt(var + eps)
        if r.normalise == "mul_rsqrt":
            return d * torch.rsqrt(var + eps)
        if r.normalise == "mul_reciprocal_sqrt":
            return d * torch.reciprocal(torch.sqrt(var + eps))
        return d * (var + eps) ** -0.5

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        r, w, b = self.recipe, self.weight, self.bias
        if r.near_miss == "per_pixel_scale":
            return y * y.detach().amax(1, keepdim=True)
        c = y.shape[1]
        if r.affine == "none":
            return y
        if r.affine == "param_1c11":
            return y * w + b
        if r.affine == "view":
            w, b = w.view(1, -1, 1, 1), b.view(1, -1, 1, 1)
        elif r.affine == "reshape":
            w, b = w.reshape(1, c, 1, 1), b.reshape(1, c, 1, 1)
        else:
            w, b = w[:, None, None], b[:, None, None]
        if r.affine == "weight_only":
            return y * w
        if r.affine == "bias_only":
            return y + b
        if r.affine == "weight_last":
            return w * y + b
        return y * w + b


class Wrapped(nn.Module):
    """The norm between two convolutions, as it sits in a real network."""

    def __init__(self, recipe: Recipe, channels: int = 12) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1, stride=recipe.stride)
        self.norm = GeneratedNorm(recipe, channels)
        self.conv_out = nn.Conv2d(channels, 4, 1)
        self.round_trip = recipe.dtype == "fp16_round_trip"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        y = self.norm(h.half()).float() if self.round_trip else self.norm(h)
        return self.conv_out(torch.relu(y))
