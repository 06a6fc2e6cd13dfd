"""Fused forms: subgraphs that compute a LayerNorm2d, one function per form.

Each form takes the builder, the NCHW input, an optional per-channel scale (C,), an optional
bias (C,), epsilon and the graph's opset, and returns the NCHW output. Every form but ``native``
is in that opset's standard ops, so any runtime can run the result; ``native`` is ln2d's own
kernel (``ln2d.native``). They differ in how fast a given runtime runs them (see ``ln2d bench``),
not in what they compute: statistics are always fp32.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import onnx_ir as ir

from ln2d import native as ln2d_native
from ln2d.export.fusion._ir import axes_are_input
from ln2d.export.fusion.patterns import new_initializer
from ln2d.export.fusion.report import Site

Form = Callable[..., ir.Value]
_LOW_PRECISION = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def transpose_layernorm(op, x, scale, bias, epsilon: float, opset: int) -> ir.Value:
    """Transpose to NHWC, LayerNormalization over the last axis (fp32 statistics), back.

    One fused kernel wherever LayerNormalization has one (every GPU runtime); on CPU the two
    transposes cost more than the norm itself once tensors leave the cache. Opset 17 and up."""
    nhwc = op.Transpose(x, perm=[0, 2, 3, 1])
    inputs = [nhwc, _ones_if_none(op, x, scale)] + ([bias] if bias is not None else [])
    y = op.LayerNormalization(*inputs, axis=-1, epsilon=epsilon, stash_type=1)
    return op.Transpose(y, perm=[0, 3, 1, 2])


def reduce_div(op, x, scale, bias, epsilon: float, opset: int) -> ir.Value:
    """The arithmetic exporters write for LayerNorm2d's forward, canonicalized: two
    ReduceMeans, Mul for the square, a Div by the standard deviation, then Mul and Add for the
    affine. A decomposed site's original form, which the tuner always keeps among its
    candidates."""
    channels, mean_c = x.shape[1], partial(_reduce, opset=opset)

    def body(x, scale, bias):
        centred = op.Sub(x, mean_c(op, x, channels))
        variance = mean_c(op, op.Mul(centred, centred), channels)
        eps = new_initializer(op, np.array(epsilon, np.float32), "eps")
        y = op.Div(centred, op.Sqrt(op.Add(variance, eps)))
        axes = new_initializer(op, np.array([1, 2], np.int64), "axes")
        if scale is not None:
            y = op.Mul(y, op.Unsqueeze(scale, axes))
        return y if bias is None else op.Add(y, op.Unsqueeze(bias, axes))

    return _in_fp32(op, x, scale, bias, body)


def channel_moments(op, x, scale, bias, epsilon: float, opset: int) -> ir.Value:
    """NCHW viewed as (N, C, H*W), both means over C as a (1, C) @ (C, H*W) MatMul, one
    reciprocal square root per pixel, and the per-channel affine as one BatchNormalization:

        d = x - mean_c(x);  y = d / sqrt(mean_c(d * d) + eps) * weight + bias

    No transposes. The fastest form for a bare norm at batch 1, where ONNX Runtime runs a
    ReduceMean over axis 1 on one thread; but at batch 8 and more its MatMuls can lose to
    the decomposed graph, so no target picks it (``ln2d bench``)."""
    body = partial(_flat_moments, op, channels=x.shape[1], epsilon=epsilon)
    return _in_fp32(op, x, scale, bias, body)


def reduce_moments(op, x, scale, bias, epsilon: float, opset: int) -> ir.Value:
    """As ``channel_moments`` in 4-D, with both means over C as ReduceMean, the reduction the
    decomposed graph has. Same reductions, fewer and cheaper passes (Mul for Pow and Div, one
    reciprocal per pixel, the affine in one pass)."""
    mean_c = partial(_reduce, opset=opset)
    body = partial(_moments, op, channels=x.shape[1], epsilon=epsilon, mean_c=mean_c)
    return _in_fp32(op, x, scale, bias, body)


def conv_moments(op, x, scale, bias, epsilon: float, opset: int) -> ir.Value:
    """As ``channel_moments`` in 4-D, with both means over C as 1x1 convolutions of weight
    1/C. ONNX Runtime's CPU provider pays for NCHWc reorders around each of them."""
    body = partial(_moments, op, channels=x.shape[1], epsilon=epsilon, mean_c=_conv)
    return _in_fp32(op, x, scale, bias, body)


def centred_conv(op, x, scale, bias, epsilon: float, opset: int) -> ir.Value:
    """For x = Conv(input, W, b) that feeds only this norm (``centrable``): the channel mean of
    a convolution is the convolution with the channel mean of its weights, so

        x - mean_c(x) = Conv(input, W - mean_c(W), b - mean_c(b))

    and the centred values come out of the Conv itself: no mean, no subtraction."""
    conv = x.producer()
    weight = conv.inputs[1].const_value.numpy().astype(np.float64)
    has_bias = len(conv.inputs) > 2 and conv.inputs[2] is not None
    bias_in = conv.inputs[2].const_value.numpy() if has_bias else np.zeros(weight.shape[0])
    centred = op.Conv(
        conv.inputs[0],
        new_initializer(op, (weight - weight.mean(0, keepdims=True)).astype(np.float32), "w"),
        new_initializer(op, (bias_in - bias_in.mean(dtype=np.float64)).astype(np.float32), "b"),
        **{name: attr.value for name, attr in conv.attributes.items()},
    )
    # A 1x1 convolution for the variance too: it stays in ONNX Runtime's NCHWc layout next to
    # the centred Conv (measured faster than a MatMul here, which needs reshapes around it).
    return _normalise(op, centred, x.shape[1], scale, bias, epsilon, _conv)


def centrable(x: ir.Value) -> bool:
    """x is an fp32 Conv output with constant weights, one group, and no other consumer."""
    conv = x.producer()
    if conv is None or (conv.domain, conv.op_type) not in {("", "Conv"), ("ai.onnx", "Conv")}:
        return False
    group = conv.attributes.get("group")
    return (
        x.dtype == ir.DataType.FLOAT
        and (group is None or group.value == 1)
        and all(v.const_value is not None for v in conv.inputs[1:] if v is not None)
        and len(x.uses()) == 1
        and not x.is_graph_output()
    )


def native(op, x, scale, bias, epsilon: float, opset: int) -> ir.Value:
    """ln2d's own kernel, ``ai.ln2d::LayerNorm2d`` (``ln2d.native``): X read once for the
    statistics and once for the output, Y written once, where every standard-op form passes
    over the tensor many times. Runs only where the library is registered in the session."""
    channels = x.shape[1]

    def body(x, scale, bias):
        ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
        scale = scale if scale is not None else new_initializer(op, ones, "scale")
        bias = bias if bias is not None else new_initializer(op, zeros, "bias")
        return op.LayerNorm2d(x, scale, bias, epsilon=epsilon, _domain=ln2d_native.DOMAIN)

    return _in_fp32(op, x, scale, bias, body)


def _flat_moments(op, x, scale, bias, channels: int, epsilon: float) -> ir.Value:
    flat = _flatten(op, x, channels)
    centred = op.Sub(flat, _matmul(op, flat, channels))
    y = _normalise(op, centred, channels, scale, bias, epsilon, _matmul)
    return op.Reshape(y, op.Shape(x))


def _moments(op, x, scale, bias, channels: int, epsilon: float, mean_c) -> ir.Value:
    # channels is passed in: x may be a new Cast whose shape is not inferred yet.
    centred = op.Sub(x, mean_c(op, x, channels))
    return _normalise(op, centred, channels, scale, bias, epsilon, mean_c)


def _normalise(op, centred, channels: int, scale, bias, epsilon: float, mean_c) -> ir.Value:
    """centred / sqrt(mean_c(centred^2) + eps) * scale + bias, for (N, C, ...) centred."""
    variance = mean_c(op, op.Mul(centred, centred), channels)
    eps = new_initializer(op, np.array(epsilon, np.float32), "eps")
    normalised = op.Mul(centred, op.Reciprocal(op.Sqrt(op.Add(variance, eps))))
    zeros = np.zeros(channels, np.float32)
    # BatchNormalization with mean 0, variance 1 and epsilon 0 is exactly y * scale + bias,
    # in one pass over the tensor instead of two.
    return op.BatchNormalization(
        normalised,
        scale if scale is not None else new_initializer(op, np.ones(channels, np.float32), "w"),
        bias if bias is not None else new_initializer(op, zeros, "bias"),
        new_initializer(op, zeros, "mean"),
        new_initializer(op, np.ones(channels, np.float32), "var"),
        epsilon=0.0,
    )


def _flatten(op, x, channels: int) -> ir.Value:
    """(N, C, H, W) -> (N, C, H*W), a view of the same buffer."""
    return op.Reshape(x, new_initializer(op, np.array([0, channels, -1], np.int64), "shape"))


def _matmul(op, flat, channels: int) -> ir.Value:
    """mean over C of (N, C, L) as (1, C) @ (C, L) -> (N, 1, L)."""
    ones = np.full((1, channels), 1 / channels, np.float32)
    return op.MatMul(new_initializer(op, ones, "mean_weight"), flat)


def _reduce(op, x, channels: int, opset: int) -> ir.Value:
    """mean over C of (N, C, H, W) as ReduceMean -> (N, 1, H, W), axes as the opset has them."""
    if axes_are_input("ReduceMean", opset):
        axes = new_initializer(op, np.array([1], np.int64), "axes")
        return op.ReduceMean(x, axes, keepdims=1)
    return op.ReduceMean(x, axes=[1], keepdims=1)


def _conv(op, x, channels: int) -> ir.Value:
    """mean over C of (N, C, H, W) as a 1x1 convolution -> (N, 1, H, W)."""
    weight = np.full((1, channels, 1, 1), 1 / channels, np.float32)
    return op.Conv(x, new_initializer(op, weight, "mean_weight"))


def _ones_if_none(op, x, scale) -> ir.Value:
    """LayerNormalization needs a scale: ones of C elements in x's dtype."""
    if scale is not None:
        return scale
    return new_initializer(op, np.ones(x.shape[1], dtype=x.dtype.numpy()), "scale")


def _in_fp32(op, x, scale, bias, body) -> ir.Value:
    """Run ``body`` on fp32 copies of fp16/bf16 inputs and cast the result back."""
    if x.dtype not in _LOW_PRECISION:
        return body(x, scale, bias)
    to_fp32 = [op.Cast(v, to=ir.DataType.FLOAT) if v is not None else None for v in (scale, bias)]
    return op.Cast(body(op.Cast(x, to=ir.DataType.FLOAT), *to_fp32), to=x.dtype)


FORMS: dict[str, Form] = {
    "reduce_div": reduce_div,
    "transpose_layernorm": transpose_layernorm,
    "channel_moments": channel_moments,
    "reduce_moments": reduce_moments,
    "conv_moments": conv_moments,
    "centred_conv": centred_conv,  # only where ``centrable``
    "native": native,  # only where this install has the library
}
MIN_OPSET = {"transpose_layernorm": 17}  # LayerNormalization; every other form: 13


def exists_at(form: str, opset: int) -> bool:
    """The form's ops are all in this opset."""
    return opset >= MIN_OPSET.get(form, 13)


def lowers(form: str, site: Site) -> bool:
    """The form can replace this site: its ops exist at the site's opset, centred_conv only
    where a Conv can be centred, native only where the library is installed."""
    needs_conv = form == "centred_conv"
    needs_library = form == "native"
    return (
        form in FORMS
        and exists_at(form, site.opset)
        and (site.centrable or not needs_conv)
        and (ln2d_native.available() or not needs_library)
    )


def forms_for(site: Site) -> list[str]:
    """Every form that can replace this site."""
    return [form for form in FORMS if lowers(form, site)]
