"""The fusion report: counts, the table a user reads, the JSON, and the metadata entry an
exported model carries, from a real fusion of a hand-built graph with one rejected look-alike."""

from __future__ import annotations

import json

import onnx

from ln2d.export.fusion import fuse_model
from tests.generated_graphs import GraphRecipe, build


def _two_sites() -> onnx.ModelProto:
    """A LayerNorm2d followed by an RMS norm of its output (a look-alike that is refused)."""
    model = build(GraphRecipe(), 18)
    rms = build(GraphRecipe(near_miss="rms", affine="none"), 18)
    prefix = {n: f"rms_{n}" for n in [o for node in rms.graph.node for o in node.output]}
    model.graph.node[-1].output[0] = "first"
    for node in rms.graph.node:
        node.input[:] = ["first" if i == "x" else prefix.get(i, f"rms_{i}") for i in node.input]
        node.output[:] = ["y" if o == "y" else prefix[o] for o in node.output]
        node.name = f"rms_{node.name}"
    for tensor in rms.graph.initializer:
        tensor.name = f"rms_{tensor.name}"
    model.graph.initializer.extend(rms.graph.initializer)
    model.graph.node.extend(rms.graph.node)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_the_report_counts_lists_and_serialises_every_site():
    _, report = fuse_model(_two_sites(), "cpu")
    assert report.counts() == {"fused": 1, "rejected": 1}
    table = report.table()
    assert table.startswith("2 LayerNorm2d candidate site(s): 1 fused, 0 already fused, 1 rejected")
    assert "checked: onnx.checker pass, onnxruntime pass, numerics pass" in table
    assert "ln2d_site_0" in table and "an RMS norm" in table
    data = json.loads(report.to_json())
    assert data["summary"]["sites"] == 2 and data["ops_before"]["ReduceMean"] == 3
    entry = report.metadata("cpu")
    assert entry["fused"] and entry["target"] == "cpu"
    assert [s["status"] for s in entry["sites"]] == ["fused", "rejected"]
    assert report.entries("cpu").requires is None
