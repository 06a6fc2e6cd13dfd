"""SimpleLN_CNN, its architecture config, and the registry of pluggable norm layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ln2d.layers import LayerNorm2d


def _group_norm(channels: int, eps: float) -> nn.Module:
    # 8 groups where the width allows it: the common small-batch detection setting.
    return nn.GroupNorm(math.gcd(channels, 8), channels, eps=eps)


NORMS: dict[str, Callable[[int, float], nn.Module]] = {
    "layernorm2d": lambda c, eps: LayerNorm2d(c, eps=eps),
    "batchnorm": lambda c, eps: nn.BatchNorm2d(c, eps=eps),
    "groupnorm": _group_norm,
    "instancenorm": lambda c, eps: nn.InstanceNorm2d(c, eps=eps, affine=True),
    # No normalisation: the baseline that shows what a norm layer costs.
    "none": lambda c, eps: nn.Identity(),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a SimpleLN_CNN; stored in checkpoints and ONNX metadata."""

    in_channels: int = 3
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)
    norm: str = "layernorm2d"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {self.widths}")
        if self.in_channels < 1 or self.num_classes < 1:
            raise ValueError("in_channels and num_classes must be positive")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))

    @property
    def min_input_size(self) -> int:
        """Smallest H and W that survive one 2x2 max-pool per stage."""
        return 2 ** len(self.widths)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "widths" in known:
            known["widths"] = tuple(known["widths"])
        return cls(**known)


class SimpleLN_CNN(nn.Module):
    """(Conv3x3 -> norm -> ReLU -> MaxPool2) per width, then global average pool and a Linear."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        norm: str = "layernorm2d",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.config = ModelConfig(in_channels, num_classes, tuple(widths), norm, eps)
        stages = []
        channels = in_channels
        for width in self.config.widths:
            stages.append(
                nn.Sequential(
                    # No conv bias: every norm here subtracts a mean or adds its own shift.
                    nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=norm == "none"),
                    NORMS[norm](width, eps),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            channels = width
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)

    @classmethod
    def from_config(cls, config: ModelConfig) -> SimpleLN_CNN:
        return cls(config.in_channels, config.num_classes, config.widths, config.norm, config.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.flatten(self.pool(x), 1))
