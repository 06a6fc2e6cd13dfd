"""LayerNorm2d: LayerNorm over the channel axis of an NCHW tensor, at every pixel."""

from __future__ import annotations

import torch
from torch import nn

from ln2d.functional import layer_norm_2d


class LayerNorm2d(nn.Module):
    """Normalise each pixel's channel vector of an ``(N, C, H, W)`` tensor.

    ``y = (x - mean_c(x)) / sqrt(var_c(x) + eps) * weight[c] + bias[c]`` with the biased variance,
    computed per ``(n, h, w)``: no dependence on the batch, no permute. Parameters are named
    ``weight`` and ``bias`` (the ConvNeXt / timm convention) so third-party state dicts load.

    fp16 / bf16 inputs are normalised with fp32 statistics and come back in their own dtype,
    because their short mantissa makes ``E[(x - mean)^2]`` lose most of its digits.

    The forward is ``ln2d.functional.layer_norm_2d``: fast in training and inference for NCHW
    and channels_last input alike, and the plain formula while compiling or exporting.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be positive, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"LayerNorm2d expects (N, C, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_channels:
            raise ValueError(
                f"LayerNorm2d was built for {self.num_channels} channels, "
                f"got input with {x.shape[1]} (shape {tuple(x.shape)})"
            )
        return layer_norm_2d(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
