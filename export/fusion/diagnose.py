"""Explain the candidate sites that did not fuse: every channel-statistics ReduceMean left over."""

from __future__ import annotations

import onnx_ir as ir

from ln2d.export.fusion._ir import rank
from ln2d.export.fusion.patterns import rejection
from ln2d.export.fusion.report import Site


def _is_square_of(value: ir.Value) -> ir.Value | None:
    """v if value is v * v or v ** 2, else None."""
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Mul" and node.inputs[0] is node.inputs[1]:
        return node.inputs[0]
    if node.op_type == "Pow":
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
        return "mean of squares with no mean subtracted (an RMS norm), not a LayerNorm"
    reason = rejection(x, None, [node.outputs[0]])
    if reason:
        return reason
    return (
        "mean-centred over channels, but the variance / normalisation does not match a "
        "biased-variance LayerNorm (e.g. unbiased variance, or other ops in between)"
    )
