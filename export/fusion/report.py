"""The fusion report: every candidate site, fused or rejected and why, plus op histograms."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx

from ln2d.metadata import ModelMetadata


@dataclass
class Site:
    name: str
    status: str  # "fused" | "already_fused" | "rejected"
    channels: int | None = None
    epsilon: float | None = None
    style: str | None = None
    affine: str | None = None  # "weight+bias" | "weight" | "none"
    form: str | None = None
    why: str | None = None  # why this form: the target's rule that picked it
    centrable: bool = False  # input is a Conv output the centred_conv form can fold into
    producer: str | None = None  # op type that produces the site's input
    module: str | None = None  # the PyTorch module whose output the site is, when known
    reason: str | None = None
    anchor: str | None = None  # the site's input value (fused) or its mean node (rejected)
    output: str | None = None  # the site's output value: same name before and after fusion
    opset: int | None = None  # the graph's default-domain opset, which bounds the forms
    original: str | None = None  # the form it came in: "reduce_div" | "transpose_layernorm"
    timings_ms: dict[str, float] | None = None  # --tune: median ms of the whole model per form


@dataclass
class FusionReport:
    sites: list[Site] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    verification: dict[str, object] = field(default_factory=dict)  # the gate's steps
    tuning: dict[str, object] | None = None  # --tune: shapes, baseline and result timings
    notes: list[str] = field(default_factory=list)  # e.g. which exporter wrote the graph

    @property
    def fused(self) -> list[Site]:
        return [s for s in self.sites if s.status != "rejected"]

    @property
    def rejected(self) -> list[Site]:
        return [s for s in self.sites if s.status == "rejected"]

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.status for s in self.sites))

    def to_dict(self) -> dict:
        return {
            "summary": {
                "sites": len(self.sites),
                **{k: v for k, v in sorted(self.counts().items())},
                "nodes_before": sum(self.ops_before.values()),
                "nodes_after": sum(self.ops_after.values()),
            },
            "sites": [asdict(s) for s in self.sites],
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "verification": self.verification,
            "tuning": self.tuning,
            "notes": self.notes,
        }

    def entries(self, target: str) -> ModelMetadata:
        """Every metadata entry fusion writes: ``fusion``, and ``requires`` where a site is
        ln2d's native op, so that whoever reads the file knows which library it needs."""
        native = any(site.form == "native" for site in self.fused)
        requires = "ln2d.native" if native else None
        return ModelMetadata(fusion=self.metadata(target), requires=requires)

    def metadata(self, target: str) -> dict:
        """The ``ln2d.fusion`` metadata entry: what was chosen per site, why, and timings."""
        keys = (
            "name",
            "status",
            "style",
            "form",
            "why",
            "output",
            "module",
            "reason",
            "timings_ms",
        )
        sites = [{k: getattr(s, k) for k in keys} for s in self.sites]
        summary = self.to_dict()["summary"]
        entry = {"fused": bool(self.fused), "target": target, **summary, "sites": sites}
        if self.tuning:
            entry["tuning"] = self.tuning
        if self.notes:
            entry["notes"] = self.notes
        return entry

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary_line(self) -> str:
        c = self.counts()
        return (
            f"{len(self.sites)} LayerNorm2d candidate site(s): {c.get('fused', 0)} fused, "
            f"{c.get('already_fused', 0)} already fused, {c.get('rejected', 0)} rejected; "
            f"nodes {sum(self.ops_before.values())} -> {sum(self.ops_after.values())}"
        )

    def table(self) -> str:
        lines = [self.summary_line()]
        if self.verification:
            lines.append("  checked: " + _checks(self.verification))
        lines += [f"  note: {note}" for note in self.notes]
        for s in self.sites:
            detail = (
                s.reason
                if s.status == "rejected"
                else f"C={s.channels} eps={s.epsilon:g} {s.style} affine={s.affine} -> {s.form}"
                + (f" ({s.why})" if s.why else "")
            )
            lines.append(f"  {s.name:<14} {s.status:<14} {detail}")
        return "\n".join(lines)


def _checks(steps: dict) -> str:
    """onnx.checker pass, onnxruntime pass, numerics pass at 1x3x32x32 and 2x3x48x40."""
    parts = []
    for step, result in steps.items():
        if isinstance(result, dict):
            shapes = " and ".join("x".join(map(str, s[0])) for s in result.get("shapes", []))
            result = result["status"] + (f" at {shapes}" if shapes else "")
        parts.append(f"{step} {result}")
    return ", ".join(parts)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        for n in model.graph.node
    )
    return dict(sorted(counts.items()))
