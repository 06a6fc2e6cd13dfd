"""Find every per-pixel channel LayerNorm in an ONNX graph and replace it with a fused form.

    canonicalize -> match (placeholders) -> absorb affine -> diagnose the rest -> lower -> clean

``fuse_model`` works on any ONNX model, not only ln2d's exports.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as passes
from onnxscript.rewriter import pattern

from export.fusion.canonicalize import canonical_rules
from export.fusion.diagnose import rejected_sites
from export.fusion.forms import centrable
from export.fusion.lowering import lowering_rules
from export.fusion.patterns import DOMAIN, PLACEHOLDER, affine_rules, matching_rules
from export.fusion.report import FusionReport, Site, op_histogram
from export.fusion.targets import DEFAULT_TARGET, FormChoice, chooser

__all__ = ["FusionReport", "Site", "fuse_model"]


def fuse_model(
    model: onnx.ModelProto, choose: FormChoice | str = DEFAULT_TARGET
) -> tuple[onnx.ModelProto, FusionReport]:
    """Return the fused model and the report. ``choose`` is a target name (``TARGETS``) or a
    function from a site to its form and the reason for it."""
    report = FusionReport(ops_before=op_histogram(model))
    graph = ir.serde.deserialize_model(model)
    _reinfer_shapes(graph)
    _to_fixpoint(canonical_rules(), graph, reinfer=True)
    for canonical in (
        passes.IdentityEliminationPass(),
        # Equal constants become one initializer, so equal computations become one node.
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(),
    ):
        canonical(graph)
    _to_fixpoint(matching_rules(), graph)
    _to_fixpoint(affine_rules(), graph)
    report.sites = _name_sites(graph) + rejected_sites(graph)
    if not report.fused:
        report.ops_after = report.ops_before
        return model, report
    choose = chooser(choose) if isinstance(choose, str) else choose
    for site in report.fused:
        site.form, site.why = choose(site)
    forms = {site.name: site.form for site in report.fused}
    _to_fixpoint(lowering_rules(forms.__getitem__), graph)
    for cleanup in (
        passes.RemoveUnusedNodesPass(),
        passes.RemoveUnusedOpsetsPass(),
        passes.TopologicalSortPass(),
    ):
        cleanup(graph)
    graph.opset_imports.pop(DOMAIN, None)
    fused = ir.serde.serialize_model(graph)
    report.ops_after = op_histogram(fused)
    return fused, report


def _to_fixpoint(
    rules: pattern.RewriteRuleSet, model: ir.Model, reinfer: bool = False, limit: int = 20
) -> None:
    """Apply until nothing changes; ``reinfer`` when later rules read the shapes of new nodes."""
    for _ in range(limit):
        if rules.apply_to_model(model) == 0:
            return
        if reinfer:
            passes.RemoveUnusedNodesPass()(model)
            _reinfer_shapes(model)


def _reinfer_shapes(model: ir.Model) -> None:
    """Forget intermediate shapes (rewrites reuse names) and infer them afresh."""
    boundary = {*model.graph.inputs, *model.graph.outputs}
    for node in model.graph:
        for value in node.outputs:
            if value not in boundary:
                value.shape = None
    passes.ShapeInferencePass(data_prop=True)(model)


def _name_sites(model: ir.Model) -> list[Site]:
    """Give each placeholder a site name (its attribute) and describe it."""
    sites = []
    placeholders = [n for n in model.graph if n.domain == DOMAIN and n.op_type == PLACEHOLDER]
    for index, node in enumerate(placeholders):
        name = f"ln2d_site_{index}"
        node.attributes["site"] = ir.AttrString("site", name)
        x = node.inputs[0]
        affine = {1: "none", 2: "weight", 3: "weight+bias"}[len(node.inputs)]
        already = "already_fused" in node.attributes
        sites.append(
            Site(
                name=name,
                status="already_fused" if already else "fused",
                channels=x.shape[1],
                epsilon=node.attributes["epsilon"].as_float(),
                style=node.attributes["style"].as_string(),
                affine=affine,
                anchor=x.name,
                output=node.outputs[0].name,
                centrable=centrable(x),
            )
        )
    return sites
