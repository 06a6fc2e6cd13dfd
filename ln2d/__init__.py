"""ln2d: channels-first LayerNorm2d CNNs, from a PyTorch checkpoint to a served ONNX model.

The package imports torch lazily, so the ``ln2d`` console command also runs in a serving install
that has no torch (``ln2d serve`` needs only the ``serve`` package).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["LayerNorm2d", "ModelConfig", "SimpleLN_CNN", "__version__"]

if TYPE_CHECKING:
    from ln2d.layers import LayerNorm2d
    from ln2d.model import ModelConfig, SimpleLN_CNN


def __getattr__(name: str):
    if name == "LayerNorm2d":
        from ln2d.layers import LayerNorm2d

        return LayerNorm2d
    if name in {"SimpleLN_CNN", "ModelConfig"}:
        from ln2d import model

        return getattr(model, name)
    raise AttributeError(f"module 'ln2d' has no attribute {name!r}")
