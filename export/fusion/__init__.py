"""Find every per-pixel channel LayerNorm in an ONNX graph and replace it with a fused form.

    canonicalize -> match (placeholders) -> absorb affine -> diagnose the rest   = ``match``
    choose a form per site -> lower in the graph's opset -> clean -> name nodes   = ``lower``
    onnx.checker, ONNX Runtime, numbers against the input graph                   = ``verify``

``fuse_model`` does all three and works on any ONNX model, not only ln2d's exports. Matching
runs once; the tuner lowers the same matched graph once per candidate assignment.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as passes
from onnxscript.rewriter import pattern

from ln2d import native
from ln2d.export.fusion.canonicalize import canonical_rules
from ln2d.export.fusion.diagnose import rejected_sites
from ln2d.export.fusion.forms import centrable, lowers
from ln2d.export.fusion.lowering import lowering_rules
from ln2d.export.fusion.patterns import DOMAIN, PLACEHOLDER, affine_rules, matching_rules
from ln2d.export.fusion.report import FusionReport, Site, op_histogram
from ln2d.export.fusion.scopes import site_modules
from ln2d.export.fusion.site_nodes import SITE_PREFIX
from ln2d.export.fusion.targets import DEFAULT_TARGET, FormChoice, chooser
from ln2d.export.fusion.verify import FusionError, verify

_SHAPED_LIKE_INPUT = {(native.DOMAIN, native.OP), (DOMAIN, PLACEHOLDER)}

__all__ = ["FusionError", "FusionReport", "Matched", "Site", "fuse_model", "lower", "match"]


@dataclass(frozen=True)
class Matched:
    """The input graph with each site replaced by an ln2d.fusion::LayerNorm2d placeholder."""

    source: onnx.ModelProto  # the input, returned as it is when nothing fuses
    placeholders: onnx.ModelProto
    report: FusionReport  # sites found and rejected; forms not chosen yet
    opset: int
    folder: Path | None = None  # where the models' external data lives, if they have any


def fuse_model(
    model: onnx.ModelProto,
    choose: FormChoice | str | Mapping[str, str] = DEFAULT_TARGET,
    check: bool = True,
) -> tuple[onnx.ModelProto, FusionReport]:
    """Return the fused model and the report. ``choose`` is a target name (``TARGETS``), a
    function from a site to its form and the reason for it, or a form per site name. With
    ``check`` the result passes the gate (``verify``) or FusionError is raised."""
    fused, report = lower(match(model), choose)
    if check:
        verify(model, fused, report)
    return fused, report


def match(model: onnx.ModelProto, folder: Path | None = None) -> Matched:
    """Canonicalize, then replace every LayerNorm2d site with a placeholder. A model whose
    weights are external data in ``folder`` is matched without reading them (the small
    constants the rules read excepted), and the placeholders refer to the same files."""
    report = FusionReport(ops_before=op_histogram(model))
    # A copy: onnx-ir wraps the proto's tensors and the passes write into them (names), and
    # the input must come back untouched when nothing beats it.
    working = onnx.ModelProto()
    working.CopyFrom(model)
    graph = _deserialize(working, folder)
    opset = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 0))
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
    report.sites = _name_sites(graph, opset) + rejected_sites(graph)
    modules = site_modules(model, [site.output for site in report.fused])
    for site in report.fused:
        site.module = modules[site.output]
    return Matched(model, ir.serde.serialize_model(graph), report, opset, folder)


def lower(
    matched: Matched, choose: FormChoice | str | Mapping[str, str] = DEFAULT_TARGET
) -> tuple[onnx.ModelProto, FusionReport]:
    """Each placeholder as the standard-op form ``choose`` picks for its site."""
    report = copy.deepcopy(matched.report)
    if not report.fused:
        report.ops_after = report.ops_before
        return matched.source, report
    for site in report.fused:
        site.form, site.why = _choice(choose, site)
        if not lowers(site.form, site):
            raise ValueError(f"form {site.form!r} cannot lower {site.name} ({site.opset=})")
    graph = _deserialize(matched.placeholders, matched.folder)
    before = set(graph.graph)
    forms = {site.name: site.form for site in report.fused}
    _to_fixpoint(lowering_rules(forms.__getitem__, matched.opset), graph)
    for cleanup in (
        passes.RemoveUnusedNodesPass(),
        passes.RemoveUnusedOpsetsPass(),
        passes.TopologicalSortPass(),
    ):
        cleanup(graph)
    graph.opset_imports.pop(DOMAIN, None)
    _label_site_nodes(graph, before, report.fused)
    fused = ir.serde.serialize_model(graph)
    report.ops_after = op_histogram(fused)
    return fused, report


def _deserialize(model: onnx.ModelProto, folder: Path | None) -> ir.Model:
    graph = ir.serde.deserialize_model(model)
    if folder is not None:
        ir.external_data.set_base_dir(graph.graph, folder)
    return graph


def _choice(choose, site: Site) -> tuple[str, str]:
    if isinstance(choose, str):
        return chooser(choose)(site)
    if isinstance(choose, Mapping):
        return choose[site.name], "chosen by name"
    return choose(site)


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
    """Forget intermediate shapes (rewrites reuse names) and infer them afresh. ONNX's inference
    stops at ops it has no schema for; those that are shaped like their input (ln2d's native op,
    the placeholders) get their input's shape, and inference goes on past them."""
    boundary = {*model.graph.inputs, *model.graph.outputs}
    for node in model.graph:
        for value in node.outputs:
            if value not in boundary:
                value.shape = None
    while True:
        passes.ShapeInferencePass(data_prop=True)(model)
        stopped = [
            node
            for node in model.graph
            if (node.domain, node.op_type) in _SHAPED_LIKE_INPUT
            and node.outputs[0].shape is None
            and node.inputs[0].shape is not None
        ]
        if not stopped:
            return
        for node in stopped:
            node.outputs[0].shape, node.outputs[0].type = node.inputs[0].shape, node.inputs[0].type


def _name_sites(model: ir.Model, opset: int) -> list[Site]:
    """Give each placeholder a site name (its attribute) and describe it."""
    sites = []
    placeholders = [n for n in model.graph if n.domain == DOMAIN and n.op_type == PLACEHOLDER]
    for index, node in enumerate(placeholders):
        name = f"{SITE_PREFIX}{index}"
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
                producer=x.producer().op_type if x.producer() else "graph input",
                opset=opset,
                original=node.attributes["original"].as_string() if already else "reduce_div",
            )
        )
    return sites


def _label_site_nodes(model: ir.Model, before: set[ir.Node], sites: list[Site]) -> None:
    """Name each node a lowering made ``<site>/<op>_<i>``, so that an error from the checker
    or a runtime, which names a node, names the site too."""
    produced = {v.name: v for node in model.graph for v in node.outputs}
    order = {node: index for index, node in enumerate(model.graph)}
    # Names must stay unique: a graph fused before already holds ln2d_site_* nodes.
    taken = {node.name for node in before}
    for site in sites:
        stack, seen = [produced.get(site.output)], set()
        while stack:
            value = stack.pop()
            node = value.producer() if value is not None else None
            if node is None or node in before or node in seen:
                continue
            seen.add(node)
            stack.extend(node.inputs)
        for index, node in enumerate(sorted(seen, key=order.__getitem__)):
            name = f"{site.name}/{node.op_type}_{index}"
            while name in taken:
                name += "'"
            node.name = name
            taken.add(name)
