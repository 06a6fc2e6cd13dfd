"""What "the same numbers" means: tolerances by dtype and the one comparison rule that parity
and the fusion gate share. Torch-free, so the fuser can use it without the model library."""

from __future__ import annotations

import numpy as np

# (atol, rtol) by dtype: fp32 kernels differ in summation order, fp16 in its 11-bit mantissa.
TOLERANCES = {np.float32: (1e-4, 1e-4), np.float16: (1e-2, 1e-2), np.float64: (1e-8, 1e-8)}


def tolerance(dtype) -> tuple[float, float]:
    """(atol, rtol) for arrays of ``dtype``; fp32's for anything else (bf16 reads as fp32)."""
    return TOLERANCES.get(np.dtype(dtype).type, TOLERANCES[np.float32])


def numpy_type(type_name: str) -> np.dtype:
    """ONNX Runtime's 'tensor(float)' as numpy's float32, and so on."""
    element = type_name.removeprefix("tensor(").removesuffix(")")
    return np.dtype({"float": "float32", "double": "float64"}.get(element, element))


def close(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> bool:
    """numpy's allclose rule, |actual - expected| <= atol + rtol * |expected| in float64,
    and every actual value finite."""
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    return bool(np.all(diff <= atol + rtol * np.abs(expected)) and np.isfinite(actual).all())


def stored_precision(model) -> type | None:
    """``np.float16`` where an onnx.ModelProto's graph rounds values to fp16 or bf16 on the way
    (a Cast to either), else None. bf16 is held to fp16's tolerance too: one step of either is
    far above fp32's, which is what matters to a gate that must not fail on it."""
    from onnx import TensorProto

    narrow = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i in narrow for a in node.attribute):
            return np.float16
    return None
