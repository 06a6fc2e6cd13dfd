"""Fused forms: standard-ONNX subgraphs that compute a LayerNorm2d, one function per form.

Each form takes the builder, the NCHW input, a per-channel scale, an optional bias and epsilon,
and returns the NCHW output, using only standard ONNX ops so any runtime can run the result.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

Form = Callable[..., ir.Value]


def transpose_layernorm(op, x, scale, bias, epsilon: float) -> ir.Value:
    """Transpose to NHWC, LayerNormalization over the last axis (fp32 statistics), back."""
    nhwc = op.Transpose(x, perm=[0, 2, 3, 1])
    inputs = [nhwc, scale] + ([bias] if bias is not None else [])
    y = op.LayerNormalization(*inputs, axis=-1, epsilon=epsilon, stash_type=1)
    return op.Transpose(y, perm=[0, 3, 1, 2])


FORMS: dict[str, Form] = {"transpose_layernorm": transpose_layernorm}
DEFAULT_FORM = "transpose_layernorm"
