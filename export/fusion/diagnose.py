"""Explain the candidate sites that did not fuse: every channel-statistics ReduceMean left over.

A site is named by the first node where it leaves the LayerNorm2d pattern. The walk follows the
pattern's data flow from the mean (see patterns.py):

    mean -> d = x - mean -> d * d -> ReduceMean -> + eps -> Sqrt -> d / std  (or d * 1/std)

and stops at the first value none of whose uses continue it, naming that use. So the report says
"at node 'Div_12' (Div)" for an unbiased variance, or "at 'Sqrt_7'" for eps outside the root,
which is where a user looks in Netron.
"""

from __future__ import annotations

import onnx_ir as ir

from ln2d.export.fusion._ir import normalized_axes, rank, scalar
from ln2d.export.fusion.patterns import rejection
from ln2d.export.fusion.report import Site


def _is_square_of(value: ir.Value) -> ir.Value | None:
    """v if value is v * v or v ** 2, else None."""
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Mul" and node.inputs[0] is node.inputs[1]:
        return node.inputs[0]
    if node.op_type == "Pow" and scalar(node.inputs[1]) == 2.0:
        return node.inputs[0]
    return None


def _centred_by(value: ir.Value) -> ir.Value | None:
    """The mean m if value is x - m, else None."""
    node = value.producer()
    return node.inputs[1] if node is not None and node.op_type == "Sub" else None


def rejected_sites(model: ir.Model) -> list[Site]:
    means = [n for n in model.graph if n.op_type == "ReduceMean" and rank(n.inputs[0]) == 4]
    mean_outputs = {n.outputs[0] for n in means}
    sites = []
    for node in means:
        x = node.inputs[0]
        squared = _is_square_of(x)
        if squared is not None and (
            _centred_by(squared) in mean_outputs  # Var part of a centred site
            or any(m.inputs[0] is squared for m in means)  # E[x^2] part of a second-moment site
        ):
            continue
        if squared is None and not _subtracted_from_input(node):
            continue  # a plain mean (global average pooling): no norm here
        sites.append(
            Site(
                name=f"rejected_{len(sites)}",
                status="rejected",
                reason=_reason(node, x, squared),
                anchor=node.name,
            )
        )
    return sites


def _subtracted_from_input(node: ir.Node) -> bool:
    return any(
        use.node.op_type == "Sub" and use.node.inputs[0] is node.inputs[0]
        for use in node.outputs[0].uses()
    )


def _reason(node: ir.Node, x: ir.Value, squared: ir.Value | None) -> str:
    if squared is not None:
        rms = "mean of squares with no mean subtracted (an RMS norm), not a LayerNorm"
        return f"at {_named(node)}: {rms}"
    reason = rejection(x, None, [node.outputs[0]])
    if reason:
        return f"at {_named(node)}: {reason}"
    return _divergence(node)


def _named(node: ir.Node) -> str:
    """The node's name and its output's: canonicalization renames the nodes it rewrites, never
    the values they compute, so the output's name is the one to look for in the input graph."""
    output = f"output {node.outputs[0].name!r}"
    return (
        f"node {node.name!r} ({node.op_type}, {output})"
        if node.name
        else f"a {node.op_type} ({output})"
    )


class _Diverged(Exception):
    """The walk left the pattern at ``node`` (None: the value has no uses), because ``why``."""

    def __init__(self, value: ir.Value, why: str, node: ir.Node | None = None) -> None:
        uses = [use.node for use in value.uses()]
        self.node = node or (uses[0] if uses else None)
        self.value, self.why = value, why


def _divergence(mean: ir.Node) -> str:
    try:
        _walk(mean)
    except _Diverged as stop:
        where = _named(stop.node) if stop.node else f"{stop.value.name!r}, which nothing uses"
        return (
            f"mean-centred over channels, but leaves the LayerNorm pattern at {where}: {stop.why}"
        )
    return (
        "mean-centred over channels and shaped like a LayerNorm, but the parts do not fit "
        "together (e.g. the normalisation divides another tensor than x - mean)"
    )


def _walk(mean: ir.Node) -> None:
    """Follow mean -> variance -> + eps -> Sqrt -> division; raise _Diverged where it stops."""
    x, m = mean.inputs[0], mean.outputs[0]
    d = _use(m, "x - mean", lambda n: n.op_type == "Sub" and n.inputs[0] is x)
    var = _variance(x, m, d)
    shifted = _use(
        var, "variance + eps (the biased variance, not rescaled)", lambda n: n.op_type == "Add"
    )
    eps = next(v for v in shifted.producer().inputs if v is not var)
    if scalar(eps) is None:
        raise _Diverged(
            var, "eps is not a constant scalar (it is computed, or an input)", shifted.producer()
        )
    reason = rejection(x, eps, [])
    if reason:
        raise _Diverged(var, reason, shifted.producer())
    std = _use(shifted, "Sqrt(variance + eps)", lambda n: n.op_type == "Sqrt")
    _use(
        std,
        "(x - mean) / Sqrt(variance + eps), or times its Reciprocal",
        lambda n: (n.op_type == "Div" and n.inputs[0] is d) or n.op_type == "Reciprocal",
    )


def _variance(x: ir.Value, m: ir.Value, d: ir.Value) -> ir.Value:
    """The channel variance computed from d = x - mean, or as E[x^2] - mean^2."""
    squares = [use.node.outputs[0] for use in d.uses() if _is_square_of(use.node.outputs[0]) is d]
    if squares:
        return _use(
            squares[0],
            "the mean of (x - mean)^2 over axis 1 (a sum must be divided by the channel count)",
            lambda n: n.op_type == "ReduceMean" and normalized_axes(n, d) == [1],
        )
    x_squares = [u.node.outputs[0] for u in x.uses() if _is_square_of(u.node.outputs[0]) is x]
    if not x_squares:
        expected = "(x - mean)^2 (as d * d or d ** 2), or E[x^2] - mean^2, for the variance"
        raise _Diverged(d, f"expected {expected}")
    second = _use(
        x_squares[0],
        "the mean of x^2 over axis 1",
        lambda n: n.op_type == "ReduceMean" and normalized_axes(n, x) == [1],
    )
    raw = _use(
        second, "E[x^2] - mean^2", lambda n: n.op_type == "Sub" and _is_square_of(n.inputs[1]) is m
    )
    clamped = [use.node.outputs[0] for use in raw.uses() if use.node.op_type in ("Max", "Clip")]
    return clamped[0] if clamped else raw


def _use(value: ir.Value, expected: str, fits) -> ir.Value:
    """The output of the first use of ``value`` that ``fits`` the next step of the pattern."""
    for use in value.uses():
        if fits(use.node):
            return use.node.outputs[0]
    raise _Diverged(value, f"expected {expected}")
