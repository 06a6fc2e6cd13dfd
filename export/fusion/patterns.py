"""The LayerNorm2d patterns: what a per-pixel channel LayerNorm looks like in an ONNX graph.

After canonicalization (see canonicalize.py) every supported style reads as

    mean = ReduceMean(x, axes=[1], keepdims=1)
    d    = x - mean
    var  = ReduceMean(d * d  or  d ** 2)                        # centred
         | max(ReduceMean(x * x) - mean * mean, 0)              # second moment, clamp optional
    y    = d / Sqrt(var + eps)  or  d * Reciprocal(Sqrt(var + eps))

followed optionally by ``* weight`` and ``+ bias`` with constant per-channel tensors. A site that
matches is replaced by one ``ln2d.fusion::LayerNorm2d`` placeholder node; lowering.py later
turns each placeholder into its fused form, so matching and the choice of form stay separate.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from ln2d import native
from ln2d.export.fusion._ir import FLOAT_TYPES, const_array, keepdims, normalized_axes, scalar

# The placeholder's own domain, internal to fusion: ai.ln2d is the native op's (ln2d.native).
DOMAIN = "ln2d.fusion"
PLACEHOLDER = "LayerNorm2d"


def placeholder(op, inputs: list[ir.Value], attributes: dict) -> ir.Value:
    """An ln2d.fusion::LayerNorm2d node. Its output keeps x's type and shape, which shape inference
    cannot derive for a schema-less op and which the rules downstream of it read."""
    out = op.LayerNorm2d(*inputs, _domain=DOMAIN, **attributes)
    out.type, out.shape = inputs[0].type, inputs[0].shape
    return out


def _square(op, v):
    return pattern.OrValue([op.Mul(v, v), op.Pow(v, 2.0)])


def _channel_mean(op, v, name: str):
    return op.ReduceMean(v, _allow_other_inputs=True, _outputs=[name])


def _normalized_parts(op, x, eps):
    """(d, std): x minus its channel mean, and sqrt of the channel variance plus eps."""
    mean = _channel_mean(op, x, "mean")
    d = op.Sub(x, mean)
    centred = _channel_mean(op, _square(op, d), "var")
    raw = op.Sub(_channel_mean(op, _square(op, x), "square_mean"), _square(op, mean))
    second_moment = pattern.OrValue(
        [op.Max(raw, 0.0), op.Clip(raw, 0.0, _allow_other_inputs=True), raw]
    )
    var = pattern.OrValue(
        [centred, second_moment], tag_var="variance", tag_values=["centred", "second_moment"]
    )
    return d, op.Sqrt(op.Add(var, eps))


class _LayerNorm2dCore(pattern.RewriteRuleClassBase):
    """(x - E_c[x]) / sqrt(Var_c[x] + eps), statistics over axis 1 of a 4-D tensor."""

    division = ""

    def check(self, context, x, eps, mean, variance, **bindings):
        result = pattern.MatchResult()
        reason = rejection(x, eps, [mean, bindings.get("var"), bindings.get("square_mean")])
        if reason:
            return result.fail(reason)
        self._attributes = {"epsilon": float(scalar(eps)), "style": f"{variance}/{self.division}"}
        return result

    def rewrite(self, op, x, **_):
        return placeholder(op, [x], self._attributes)


class DivideByStd(_LayerNorm2dCore):
    division = "div"

    def pattern(self, op, x, eps):
        d, std = _normalized_parts(op, x, eps)
        return op.Div(d, std)


class MultiplyByInverseStd(_LayerNorm2dCore):
    division = "mul_reciprocal"

    def pattern(self, op, x, eps):
        d, std = _normalized_parts(op, x, eps)
        return op.Mul(d, op.Reciprocal(std))


def rejection(x: ir.Value, eps: ir.Value | None, means: list[ir.Value | None]) -> str | None:
    """Why a structurally matched site is not a per-pixel channel LayerNorm; None if it is."""
    if x.dtype not in FLOAT_TYPES:
        return f"input dtype {x.dtype} is not a float type"
    if x.shape is None or x.shape.rank() != 4:
        return f"input rank is {None if x.shape is None else x.shape.rank()}, not 4 (NCHW)"
    if not isinstance(x.shape[1], int):
        return "channel count is not static"
    for mean in means:
        if mean is None:
            continue
        axes = normalized_axes(mean.producer(), x)
        if axes != [1]:
            return f"reduces over axes {axes}, not the channel axis 1 alone"
        if keepdims(mean.producer()) != 1:
            return "mean taken with keepdims=0"
    if eps is not None:
        value = scalar(eps)
        if value is None:
            return "epsilon is not a constant scalar"
        if float(np.float32(value)) != value:
            # LayerNormalization's epsilon is a float32 attribute: refuse to round it silently.
            return f"epsilon {value!r} is not exactly representable as float32"
    return None


class AlreadyFused(pattern.RewriteRuleClassBase):
    """Transpose(0,2,3,1) -> LayerNormalization(axis=-1) -> Transpose(0,3,1,2): count, keep."""

    def pattern(self, op, x, scale):
        nhwc = op.Transpose(x, _allow_other_attributes=True, _outputs=["to_nhwc"])
        y = op.LayerNormalization(
            nhwc, scale, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["ln"]
        )
        return op.Transpose(y, _allow_other_attributes=True, _outputs=["to_nchw"])

    def check(self, context, x, scale, to_nhwc, ln, to_nchw, **_):
        result = pattern.MatchResult()
        node = ln.producer()
        perm_in = to_nhwc.producer().attributes.get("perm")
        perm_out = to_nchw.producer().attributes.get("perm")
        if perm_in is None or list(perm_in.as_ints()) != [0, 2, 3, 1]:
            return result.fail("first transpose is not NCHW -> NHWC")
        if perm_out is None or list(perm_out.as_ints()) != [0, 3, 1, 2]:
            return result.fail("second transpose is not NHWC -> NCHW")
        if node.attributes.get("axis", ir.AttrInt64("axis", -1)).as_int() not in (-1, 3):
            return result.fail("LayerNormalization is not over the last axis")
        if len(node.outputs) > 1 and any(len(o.uses()) for o in node.outputs[1:]):
            return result.fail("LayerNormalization's mean / inv_std_dev outputs are used")
        if const_array(scale) is None:
            return result.fail("scale is not a constant")
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and const_array(bias) is None:
            return result.fail("bias is not a constant")
        reason = rejection(x, None, [])
        if reason:
            return result.fail(reason)
        self._bias = bias
        eps = node.attributes.get("epsilon")
        self._attributes = {
            "epsilon": 1e-5 if eps is None else eps.as_float(),
            "style": "transpose_layernormalization",
            "already_fused": 1,
            "original": "transpose_layernorm",
        }
        return result

    def rewrite(self, op, x, scale, **_):
        inputs = [x, scale] + ([self._bias] if self._bias is not None else [])
        return placeholder(op, inputs, self._attributes)


class NativeSite(pattern.RewriteRuleClassBase):
    """``ai.ln2d::LayerNorm2d``, ln2d's own kernel from an earlier fusion: a site already fused,
    which another target (or INT8, whose quantizer runs without ln2d's library) re-lowers."""

    def pattern(self, op, x, scale, bias):
        return op.LayerNorm2d(
            x, scale, bias, _domain=native.DOMAIN, _allow_other_attributes=True, _outputs=["norm"]
        )

    def check(self, context, x, scale, bias, norm, **_):
        result = pattern.MatchResult()
        if const_array(scale) is None or const_array(bias) is None:
            return result.fail("scale or bias is not a constant")
        reason = rejection(x, None, [])
        if reason:
            return result.fail(reason)
        eps = norm.producer().attributes.get("epsilon")
        self._attributes = {
            "epsilon": 1e-6 if eps is None else eps.as_float(),  # the kernel's own default
            "style": "ln2d_native",
            "already_fused": 1,
            "original": "native",
        }
        return result

    def rewrite(self, op, x, scale, bias, **_):
        return placeholder(op, [x, scale, bias], self._attributes)


def _channel_constant(value: ir.Value, channels: int) -> np.ndarray | None:
    """A constant that broadcasts as one value per channel of an NCHW tensor, as shape (C,)."""
    array = const_array(value)
    if array is None or array.size != channels or array.ndim > 4:
        return None
    per_channel = tuple(array.shape) in {(channels, 1, 1), (1, channels, 1, 1)}
    if not per_channel and channels != 1:  # with one channel, any single value is per-channel
        return None
    return array.reshape(channels)


_names = itertools.count()


def new_initializer(op, array: np.ndarray, role: str) -> ir.Value:
    return op.initializer(ir.tensor(array), name=f"ln2d_{role}_{next(_names)}")


class _AbsorbAffine(pattern.RewriteRuleClassBase):
    """Fold a following ``* weight`` (or ``+ bias``) into a placeholder that has none yet."""

    op_type = "Mul"
    slot = 1  # placeholder input index: 1 = scale, 2 = bias

    def pattern(self, op, x, value):
        norm = op.LayerNorm2d(x, _domain=DOMAIN, _allow_other_inputs=True, _outputs=["norm"])
        return getattr(op, self.op_type)(norm, value)

    def check(self, context, x, value, norm, **_):
        result = pattern.MatchResult()
        node = norm.producer()
        if len(node.inputs) > self.slot:
            return result.fail("already has this affine part")
        channels = x.shape[1]
        array = _channel_constant(value, channels)
        if array is None:
            return result.fail(f"{self.op_type} operand is not a constant of {channels} elements")
        if array.dtype != np.dtype(x.dtype.numpy()):
            return result.fail("affine constant has another dtype than the normalised tensor")
        self._array = array
        return result

    def rewrite(self, op, x, norm, **_):
        node = norm.producer()
        inputs = list(node.inputs)
        if self.slot == 2 and len(inputs) == 1:  # a bias with no weight before it
            inputs.append(new_initializer(op, np.ones_like(self._array), "scale"))
        inputs.append(new_initializer(op, self._array, "scale" if self.slot == 1 else "bias"))
        return placeholder(op, inputs, dict(node.attributes))


class AbsorbWeight(_AbsorbAffine):
    op_type, slot = "Mul", 1


class AbsorbBias(_AbsorbAffine):
    op_type, slot = "Add", 2


def matching_rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet(
        [DivideByStd.rule(), MultiplyByInverseStd.rule(), AlreadyFused.rule(), NativeSite.rule()],
        commute=True,
    )


def affine_rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([AbsorbWeight.rule(), AbsorbBias.rule()], commute=True)
