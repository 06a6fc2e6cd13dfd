"""The nodes reduced precision must leave in float: every node a fused site wrote, except the
centred Conv of ``centred_conv`` (the layer's own Conv, which computes the norm's input)."""

from __future__ import annotations

from ln2d.export.fusion import lower, match
from ln2d.export.fusion.site_nodes import site_of, statistics_nodes
from tests.generated_graphs import GraphRecipe, build


def test_every_statistics_node_of_every_site_and_no_other():
    matched = match(build(GraphRecipe(after_conv=True), 18))
    fused, _ = lower(matched, {"ln2d_site_0": "centred_conv"})
    keep, sites = statistics_nodes(fused)
    written = [n for n in fused.graph.node if n.name.startswith("ln2d_site_0/")]
    inside = {output for node in written for output in node.output}
    # The centred Conv reads the model's input, from outside the site; the variance's 1x1
    # Conv of d * d reads inside it and is a statistic like any other.
    (centred,) = [n for n in written if n.op_type == "Conv" and n.input[0] not in inside]
    assert sites == ["ln2d_site_0"]
    assert set(keep) == {n.name for n in written} - {centred.name}


def test_site_of_reads_the_site_from_a_node_name():
    assert site_of("ln2d_site_12/ReduceMean_3") == "ln2d_site_12"
