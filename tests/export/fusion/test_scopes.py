"""Which PyTorch module a site came from, read from both exporters' records: TorchScript's node
names and dynamo's name-scope metadata; an inline norm belongs to no module."""

from __future__ import annotations

import onnx
from onnx import helper

from ln2d.export.fusion.scopes import NAME_SCOPES, scope_path, site_modules


def _graph(nodes) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [], [])
    return helper.make_model(graph)


def test_torchscript_node_names_give_the_module_path():
    node = helper.make_node("Div", ["a", "b"], ["y"], name="/stages/stages.0/norm/Div")
    assert scope_path(node) == ["stages", "stages.0", "stages.0.norm"]


def test_dynamo_metadata_gives_the_module_path():
    node = helper.make_node("Div", ["a", "b"], ["y"])
    node.metadata_props.add(key=NAME_SCOPES, value="['', 'stem', 'stem.1', 'div']")
    assert scope_path(node) == ["stem", "stem.1"]


def test_a_site_belongs_to_the_module_whose_output_it_is():
    norm = helper.make_node("Add", ["a", "b"], ["normed"], name="/stem/stem.1/Add")
    inside = helper.make_node("Relu", ["normed"], ["r"], name="/block/Relu")
    assert site_modules(_graph([norm, inside]), ["normed"]) == {"normed": "stem.1"}


def test_a_norm_written_inline_in_a_bigger_forward_has_no_module():
    norm = helper.make_node("Add", ["a", "b"], ["normed"], name="/block/Add")
    used_inside = helper.make_node("Relu", ["normed"], ["r"], name="/block/Relu")
    assert site_modules(_graph([norm, used_inside]), ["normed"]) == {"normed": None}
