"""``layer_norm_2d``: LayerNorm over the channels of an ``(N, C, H, W)`` tensor, the fast way.

Which way depends on where the tensor is, how it is laid out and its dtype:

===================================  ================================================
channels_last fp32 / fp64            PyTorch's layer norm on the NHWC view: no copy at all
other input on the CPU               ln2d's C kernels (``native/layernorm2d_eager.c``)
anything else (CUDA NCHW, an         PyTorch's layer norm on a permuted copy, as timm
install without a C compiler)        does; the output then has channels_last strides
torch.compile, export, tracing       the formula written out (``layer_norm_2d_formula``),
                                     which inductor fuses and ln2d's ONNX fuser matches
===================================  ================================================

channels_last fp16 / bf16 goes to ln2d's kernel on the CPU because PyTorch's CPU layer norm
sums the parameters' gradients in the input's precision there: 10 % off in bf16 over 7,000
pixels, where ln2d's kernel sums in double.

Every way keeps only the input plus a mean and an inverse deviation per pixel for backward,
and computes the statistics in fp32 (fp64 for fp64) whatever the storage type.
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd.function import once_differentiable

from ln2d.native import eager

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_CODES = {
    torch.float32: eager.FLOAT32,
    torch.float64: eager.FLOAT64,
    torch.bfloat16: eager.BFLOAT16,
    torch.float16: eager.FLOAT16,
}


def layer_norm_2d(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``(x - mean_c) / sqrt(var_c + eps) * weight[c] + bias[c]`` at every pixel of NCHW ``x``,
    with the biased variance; ``weight`` and ``bias`` may be None. Same dtype out as in."""
    if _tracing():
        return layer_norm_2d_formula(x, weight, bias, eps)
    if not native_applies(x) or (_channels_last(x) and x.dtype not in _LOW_PRECISION):
        return _pytorch_layer_norm(x, weight, bias, eps)
    x = x.contiguous(memory_format=_layout(x))
    tracked = (t for t in (x, weight, bias) if t is not None)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
        return _NativeLayerNorm2d.apply(x, weight, bias, eps)
    return _native_forward(x, weight, bias, eps, keep_statistics=False)[0]


def layer_norm_2d_formula(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """The seed's math as plain tensor ops: what the exporters record and ln2d's fuser matches,
    and what torch.compile fuses into one kernel. fp16 / bf16 are normalised in fp32."""
    if x.dtype in _LOW_PRECISION:
        return layer_norm_2d_formula(x.float(), weight, bias, eps).to(x.dtype)
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        x = x * weight[:, None, None]
    if bias is not None:
        x = x + bias[:, None, None]
    return x


def native_applies(x: torch.Tensor) -> bool:
    """Whether ln2d's C kernel takes this tensor: on the CPU, in a dtype this install built."""
    return x.device.type == "cpu" and x.dtype in _CODES and eager.supports(_CODES[x.dtype])


def _channels_last(x: torch.Tensor) -> bool:
    """Laid out NHWC, and not also NCHW (as a tensor of one channel or one pixel is)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernel reads ``x`` in: NHWC where it is laid out so, else NCHW."""
    return torch.channels_last if _channels_last(x) else torch.contiguous_format


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _pytorch_layer_norm(x, weight, bias, eps):
    """PyTorch's layer norm kernels over the channels, read as the last axis of x's NHWC view.
    Their CPU kernels take fp32 parameters with fp16 / bf16 input (statistics in fp32); other
    devices want one dtype (statistics still in fp32)."""
    dtype = torch.float32 if _mixed_precision_on_cpu(x) else x.dtype
    weight = weight.to(dtype) if weight is not None else None
    bias = bias.to(dtype) if bias is not None else None
    return _PyTorchLayerNorm2d.apply(x, weight, bias, eps)


def _mixed_precision_on_cpu(x: torch.Tensor) -> bool:
    return x.dtype in _LOW_PRECISION and x.device.type == "cpu"


class _PyTorchLayerNorm2d(torch.autograd.Function):
    """``F.layer_norm`` on the NHWC view, but with a result of its own: F.layer_norm's output
    permuted back is a view, and an in-place op on it (the ReLU(inplace=True) after every norm
    in SimpleLN_CNN) makes autograd copy and rewrite whole gradients through the view: 36 ms a
    training step at 64x64, batch 32, more than the norm itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        nhwc = x.permute(0, 2, 3, 1)  # contiguous for channels_last input, else copied inside
        # autocast would copy the input to fp32 and hand back fp32; this layer keeps its
        # input's dtype and computes its statistics in fp32 anyway.
        autocast = torch.is_autocast_enabled(x.device.type)
        with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
            y, mean, rstd = torch.native_layer_norm(nhwc, nhwc.shape[-1:], weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return _own(y.permute(0, 3, 1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        nhwc = x.permute(0, 2, 3, 1)
        dx, dweight, dbias = torch.ops.aten.native_layer_norm_backward(
            dy.permute(0, 2, 3, 1), nhwc, nhwc.shape[-1:], mean, rstd, weight, bias,
            list(ctx.needs_input_grad[:3]),
        )  # fmt: skip
        return dx.permute(0, 3, 1, 2), dweight, dbias, None


def _own(view: torch.Tensor) -> torch.Tensor:
    """The same memory as a tensor that is no view of another (autograd lets an in-place op
    at it alone)."""
    own = torch.empty(0, dtype=view.dtype, device=view.device)
    return own.set_(view.untyped_storage(), view.storage_offset(), view.shape, view.stride())


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What the C kernel computes in, and keeps statistics and parameters in, for ``x``."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _parameter(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A parameter as the C kernel reads it: contiguous, in its compute dtype."""
    return None if t is None else t.detach().to(_compute_dtype(x)).contiguous()


def _shape(x: torch.Tensor) -> eager.Shape:
    n, c, h, w = x.shape
    return eager.Shape(n, c, h * w, _channels_last(x))


def _address(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _native_forward(x, weight, bias, eps, keep_statistics: bool):
    """y, and the per-pixel mean and rstd where kept (None otherwise)."""
    weight, bias = _parameter(weight, x), _parameter(bias, x)
    y = torch.empty_like(x)  # in x's layout
    n, _, h, w = x.shape
    mean = rstd = None
    if keep_statistics:
        mean = x.new_empty((n, 1, h, w), dtype=_compute_dtype(x))
        rstd = x.new_empty((n, 1, h, w), dtype=_compute_dtype(x))
    if x.numel():
        eager.forward(
            _CODES[x.dtype], x.data_ptr(), _address(weight), _address(bias), y.data_ptr(),
            _address(mean), _address(rstd), _shape(x), eps, torch.get_num_threads(),
        )  # fmt: skip
    return y, mean, rstd


class _NativeLayerNorm2d(torch.autograd.Function):
    """The C kernel under autograd: saves x, mean and rstd; backward is one pass of its own."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, rstd = _native_forward(x, weight, bias, eps, keep_statistics=True)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        dy = dy.contiguous(memory_format=_layout(x))
        dx = torch.empty_like(x)
        threads = torch.get_num_threads()
        c = x.shape[1]
        partial_dw = x.new_zeros((threads, c), dtype=torch.float64) if weight is not None else None
        has_bias = ctx.bias_dtype is not None
        partial_db = x.new_zeros((threads, c), dtype=torch.float64) if has_bias else None
        kernel_weight = _parameter(weight, x)
        if x.numel():
            eager.backward(
                _CODES[x.dtype], dy.data_ptr(), x.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                _address(kernel_weight), dx.data_ptr(), _address(partial_dw),
                _address(partial_db), _shape(x), threads,
            )  # fmt: skip
        dw = partial_dw.sum(0).to(weight.dtype) if weight is not None else None
        db = partial_db.sum(0).to(ctx.bias_dtype) if has_bias else None
        return dx, dw, db, None
