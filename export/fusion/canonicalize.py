"""Exact rewrites that undo exporter quirks, so one LayerNorm2d pattern matches every style.

Each rule is an algebraic identity that holds for any input, applied before matching:

- ``Div(1, s)                       -> Reciprocal(s)``      (TorchScript's rsqrt and 1 / s)
- ``Pow(s, -0.5)``, ``Pow(s, 0.5)`` ``-> Reciprocal(Sqrt(s))``, ``Sqrt(s)``  (``s ** -0.5``)
- ``Mul(a, 1)``, ``Div(a, 1)``      ``-> a``                (onnxscript's no-op rules)
- ``Div(ReduceSum(v, A), n)         -> ReduceMean(v, A)``   when n is the element count over A
                                                             (a constant, or read from v's shape)
- ``Reshape(Reduce(v, A, keepdims=0), s) -> Reduce(v, A, keepdims=1)`` when s is that shape
- ``Unsqueeze(Reduce(v, A, keepdims=0), A) -> Reduce(v, A, keepdims=1)``
- ``Reduce(v, axes=[-3])            -> Reduce(v, axes=[1])`` (axes non-negative and sorted)
- ``f(Expand(v, s), c)              -> Expand(f(v, c), s)`` for elementwise f and a scalar c
- ``g(a, Expand(v, s))              -> g(a, v)``            when a already has the shape s

The Unsqueeze rule undoes ``x.mean(1).unsqueeze(1)``. The ReduceSum, Reshape and Expand rules
undo the dynamo exporter's decomposition of ``torch.var_mean``, which reduces without keepdims
and broadcasts back with Reshape + Expand. After a strided Conv, the Expand's target holds sizes
computed from the network's input (``height // 4``): their values stay unknown, and the Expand
is dropped where the mean already spans the norm's input at those axes.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import div_by_1_rule, mul_by_1_rule

from ln2d.export.fusion._ir import (
    axes_are_input,
    expand_is_redundant,
    keepdims,
    rank,
    reduce_axes,
    scalar,
    shape_elements,
    static_dim,
    static_scalar,
)

_ELEMENTWISE_WITH_SCALAR = ("Add", "Sub", "Mul", "Div", "Max")
_ELEMENTWISE_UNARY = ("Sqrt", "Reciprocal")


def reduce(
    op, like: ir.Node, op_type: str, keep: int, opset: int, axes: list[int] | None = None
) -> ir.Value:
    """A copy of reduction ``like`` as ``op_type`` with ``keepdims=keep`` (and ``axes``, if
    given), in the opset's form (axes as attribute or input), other attributes kept so equal
    nodes stay equal for CSE."""
    axes = reduce_axes(like) if axes is None else axes
    attributes = {k: v for k, v in like.attributes.items() if k not in ("axes", "keepdims")}
    if axes_are_input(op_type, opset):
        axes_value = op.Constant(value_ints=axes)
        return getattr(op, op_type)(like.inputs[0], axes_value, keepdims=keep, **attributes)
    return getattr(op, op_type)(like.inputs[0], axes=axes, keepdims=keep, **attributes)


def model_opset(context) -> int:
    model = getattr(context, "model", None)
    return model.opset_imports.get("", 18) if model is not None else 18


class ReciprocalByDivision(pattern.RewriteRuleClassBase):
    def pattern(self, op, one, s):
        return op.Div(one, s)

    def check(self, context, one, s, **_):
        return pattern.MatchResult() if scalar(one) == 1.0 else pattern.MatchResult().fail("")

    def rewrite(self, op, s, **_):
        return op.Reciprocal(s)


class RootByPower(pattern.RewriteRuleClassBase):
    """Pow(s, -0.5) -> Reciprocal(Sqrt(s)) and Pow(s, 0.5) -> Sqrt(s): ``(v + eps) ** -0.5``."""

    def pattern(self, op, s, exponent):
        return op.Pow(s, exponent)

    def check(self, context, s, exponent, **_):
        result = pattern.MatchResult()
        return result if scalar(exponent) in (0.5, -0.5) else result.fail("not a square root")

    def rewrite(self, op, s, exponent, **_):
        root = op.Sqrt(s)
        return root if scalar(exponent) > 0 else op.Reciprocal(root)


class MeanFromSum(pattern.RewriteRuleClassBase):
    def pattern(self, op, v, n):
        return op.Div(op.ReduceSum(v, _allow_other_inputs=True, _outputs=["total"]), n)

    def check(self, context, v, n, total, **_):
        result = pattern.MatchResult()
        axes = reduce_axes(total.producer())
        count = static_scalar(n)
        if axes is None or v.shape is None or count is None:
            return result.fail("axes, shape or divisor unknown")
        dims = [v.shape[a] for a in axes]
        if not all(isinstance(d, int) for d in dims) or math.prod(dims) != count:
            return result.fail("divisor is not the element count")
        self._opset = model_opset(context)
        return result

    def rewrite(self, op, v, total, **_):
        node = total.producer()
        return reduce(op, node, "ReduceMean", keepdims(node), self._opset)


class KeepDimsByReshape(pattern.RewriteRuleClassBase):
    """Reshape(Reduce(v, keepdims=0), v's shape with 1s) -> Reduce(v, keepdims=1).

    The reduction is an input of the pattern, not part of it: exporters also read its shape
    (Shape nodes), which the rewriter would otherwise refuse to orphan.
    """

    def pattern(self, op, reduced, shape):
        return op.Reshape(reduced, shape, _allow_other_attributes=True)

    def check(self, context, reduced, shape, **_):
        """Prove ``shape`` is v's shape with the reduced axes set to 1, element by element."""
        result = pattern.MatchResult()
        node = reduced.producer()
        if node is None or node.op_type not in ("ReduceMean", "ReduceSum"):
            return result.fail("not a reshaped reduction")
        v = node.inputs[0]
        axes, r = reduce_axes(node), rank(v)
        target = shape_elements(shape)
        if keepdims(node) != 0 or axes is None or r is None or target is None or len(target) != r:
            return result.fail("not a keepdims=0 reduction reshaped to the input's rank")
        axes = sorted(a % r for a in axes)
        kept = [a for a in range(r) if a not in axes]
        for axis, element in enumerate(target):
            if axis in axes:
                if element != 1:
                    return result.fail(f"reshape puts {element} at reduced axis {axis}")
            elif not _is_dim(element, v, axis, reduced, kept.index(axis)):
                return result.fail(f"reshape does not keep dimension {axis}")
        self._opset = model_opset(context)
        return result

    def rewrite(self, op, reduced, **_):
        node = reduced.producer()
        return reduce(op, node, node.op_type, 1, self._opset)


class PlainAxes(pattern.RewriteRuleClassBase):
    """Reduce(v, axes=[-3]) -> Reduce(v, axes=[1]): axes non-negative and sorted, so that two
    means written ``dim=-3`` and ``dim=1`` become one node under CSE."""

    def __init__(self, op_type: str) -> None:
        super().__init__(f"PlainAxes{op_type}")
        self._op_type = op_type

    def pattern(self, op, v):
        return getattr(op, self._op_type)(v, _allow_other_inputs=True, _outputs=["reduced"])

    def check(self, context, v, reduced, **_):
        axes, r = reduce_axes(reduced.producer()), rank(v)
        if axes is None or r is None or sorted(a % r for a in axes) == axes:
            return pattern.MatchResult().fail("axes unknown or already plain")
        self._plain, self._opset = sorted(a % r for a in axes), model_opset(context)
        return pattern.MatchResult()

    def rewrite(self, op, reduced, **_):
        node = reduced.producer()
        return reduce(op, node, self._op_type, keepdims(node), self._opset, self._plain)


class KeepDimsByUnsqueeze(pattern.RewriteRuleClassBase):
    """Unsqueeze(Reduce(v, A, keepdims=0), A) -> Reduce(v, A, keepdims=1): ``x.mean(1)``
    followed by ``.unsqueeze(1)`` is ``x.mean(1, keepdim=True)``."""

    def pattern(self, op, reduced):
        return op.Unsqueeze(reduced, _allow_other_inputs=True, _outputs=["unsqueezed"])

    def check(self, context, reduced, unsqueezed, **_):
        result = pattern.MatchResult()
        node = reduced.producer()
        if node is None or node.op_type not in ("ReduceMean", "ReduceSum"):
            return result.fail("not an unsqueezed reduction")
        r, axes = rank(node.inputs[0]), reduce_axes(node)
        inserted = reduce_axes(unsqueezed.producer())
        if keepdims(node) != 0 or r is None or axes is None or inserted is None:
            return result.fail("not a keepdims=0 reduction with known axes")
        if sorted(a % r for a in axes) != sorted(a % r for a in inserted):
            return result.fail("unsqueezes other axes than it reduced")
        self._opset = model_opset(context)
        return result

    def rewrite(self, op, reduced, **_):
        node = reduced.producer()
        return reduce(op, node, node.op_type, 1, self._opset)


def _expand_past(op_type: str, binary: bool) -> pattern.RewriteRule:
    """f(Expand(v, s)[, c]) -> Expand(f(v[, c]), s): elementwise ops commute with Expand."""

    def target(op, v, shape, c=None):
        expanded = op.Expand(v, shape)
        return getattr(op, op_type)(expanded, c) if binary else getattr(op, op_type)(expanded)

    def condition(context, c=None, **_):
        return not binary or scalar(c) is not None

    def replacement(op, v, shape, c=None, **_):
        inner = getattr(op, op_type)(v, c) if binary else getattr(op, op_type)(v)
        return op.Expand(inner, shape)

    if binary:
        return pattern.RewriteRule(
            lambda op, v, shape, c: target(op, v, shape, c), replacement, condition
        )
    return pattern.RewriteRule(lambda op, v, shape: target(op, v, shape), replacement, condition)


def _drop_expand(op_type: str) -> pattern.RewriteRule:
    """g(a, Expand(v, s)) -> g(a, v) when s never grows past a's shape."""

    def target(op, a, v, shape):
        return getattr(op, op_type)(a, op.Expand(v, shape))

    def condition(context, a, v, shape, **_):
        return expand_is_redundant(a, v, shape)

    def replacement(op, a, v, **_):
        return getattr(op, op_type)(a, v)

    return pattern.RewriteRule(target, replacement, condition)


def canonical_rules() -> pattern.RewriteRuleSet:
    rules = [
        ReciprocalByDivision.rule(),
        RootByPower.rule(),
        mul_by_1_rule,
        div_by_1_rule,
        MeanFromSum.rule(),
        KeepDimsByReshape.rule(),
        KeepDimsByUnsqueeze.rule(),
        *(PlainAxes.rule(t) for t in ("ReduceMean", "ReduceSum")),
        *(_expand_past(t, binary=True) for t in _ELEMENTWISE_WITH_SCALAR),
        *(_expand_past(t, binary=False) for t in _ELEMENTWISE_UNARY),
        *(_drop_expand(t) for t in ("Sub", "Mul", "Div")),
    ]
    return pattern.RewriteRuleSet(rules, commute=True)


def _is_dim(element, v: ir.Value, axis: int, reduced: ir.Value, reduced_axis: int) -> bool:
    """element is v's dimension ``axis`` (read from v or from the reduced tensor, or static)."""
    if element in ((v, axis), (reduced, reduced_axis)):
        return True
    return isinstance(element, int) and element == static_dim(v, axis)
