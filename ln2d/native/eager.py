"""ctypes bindings of ``layernorm2d_eager.c``: LayerNorm2d's forward and backward for PyTorch's
eager mode, on raw contiguous NCHW or NHWC buffers (``ln2d.functional`` passes the pointers).

Torch-free: the element types are codes, the buffers addresses.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

from ln2d.native import find_library

LIBRARY_VARIABLE = "LN2D_EAGER_LIBRARY"  # another build of the source (make test-sanitized)
FLOAT32, FLOAT64, BFLOAT16, FLOAT16 = range(4)  # the C file's codes

_POINTER, _INT, _INT64, _DOUBLE = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_double


@dataclass(frozen=True)
class Shape:
    images: int
    channels: int
    plane: int  # H * W
    channels_last: bool  # memory in (N, H, W, C) order, else (N, C, H, W)


@functools.cache
def library() -> ctypes.CDLL | None:
    """This install's eager kernels, or None where it was built without a C compiler."""
    path = find_library("_layernorm2d_eager", LIBRARY_VARIABLE)
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    lib.ln2d_supports.argtypes = [_INT]
    sizes = [_INT64] * 3  # images, channels, plane
    lib.ln2d_layernorm2d_forward.argtypes = [_INT, _INT, *[_POINTER] * 6, *sizes, _DOUBLE, _INT]
    lib.ln2d_layernorm2d_backward.argtypes = [_INT, _INT, *[_POINTER] * 8, *sizes, _INT]
    return lib


def supports(dtype: int) -> bool:
    lib = library()
    return lib is not None and bool(lib.ln2d_supports(dtype))


def forward(
    dtype: int, x: int, weight: int | None, bias: int | None, y: int,
    mean: int | None, rstd: int | None, shape: Shape, eps: float, threads: int,
) -> None:  # fmt: skip
    """y = LayerNorm2d(x); mean and rstd (per pixel, in (N, H, W) order) are written where
    given. x and y are laid out as ``shape.channels_last`` says."""
    _check(library().ln2d_layernorm2d_forward(
        dtype, shape.channels_last, x, weight, bias, y, mean, rstd, shape.images,
        shape.channels, shape.plane, eps, threads,
    ))  # fmt: skip


def backward(
    dtype: int, dy: int, x: int, mean: int, rstd: int, weight: int | None, dx: int,
    dweight: int | None, dbias: int | None, shape: Shape, threads: int,
) -> None:  # fmt: skip
    """dx, and each thread's partial dweight and dbias (``threads`` rows of ``channels``
    doubles, zeroed by the caller)."""
    _check(library().ln2d_layernorm2d_backward(
        dtype, shape.channels_last, dy, x, mean, rstd, weight, dx, dweight, dbias,
        shape.images, shape.channels, shape.plane, threads,
    ))  # fmt: skip


def _check(status: int) -> None:
    if status < 0:
        raise RuntimeError("ln2d's eager kernel was built without this element type")
