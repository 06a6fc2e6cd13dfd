"""The schema-free text format reader and writer, held to Triton's own ModelConfig protobuf
(shipped in tritonclient): what protobuf reads from a text, ``pbtxt.parse`` reads too."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ln2d import pbtxt

# Written the ways people write Triton configs: comments, ':' before a message or not,
# '<>' braces, [..] lists and repeated fields, both quote styles, escapes, ';' separators.
HAND_WRITTEN = r"""
name: "resnet"   # the folder's name
platform: 'onnxruntime_onnx'
max_batch_size: 8
version_policy: { specific { versions: [1, 3] } }
input [
  { name: "in\"put" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }
]
output < name: "logits"; data_type: TYPE_FP32; dims: 10 label_filename: "labels.txt" >
instance_group { kind: KIND_CPU count: 2 }
instance_group { kind: KIND_GPU count: 1 gpus: 0 gpus: 1 }
dynamic_batching { max_queue_delay_microseconds: 2000 }
"""


def test_reads_what_protobuf_reads():
    proto = text_format.Parse(HAND_WRITTEN, model_config_pb2.ModelConfig())
    parsed = pbtxt.parse(HAND_WRITTEN)
    assert parsed["name"] == proto.name == "resnet"
    assert parsed["platform"] == proto.platform
    assert parsed["max_batch_size"] == proto.max_batch_size == 8
    assert parsed["version_policy"]["specific"]["versions"] == list(
        proto.version_policy.specific.versions
    )
    (model_input,) = parsed["input"]
    assert model_input["name"] == proto.input[0].name == 'in"put'
    assert model_input["dims"] == list(proto.input[0].dims)
    assert model_input["data_type"] == model_config_pb2.DataType.Name(proto.input[0].data_type)
    # One occurrence of a repeated field reads as one value: as_list makes it a list.
    assert parsed["output"]["dims"] == 10
    assert pbtxt.as_list(parsed["output"]["dims"]) == list(proto.output[0].dims)
    assert parsed["output"]["label_filename"] == proto.output[0].label_filename
    groups = parsed["instance_group"]
    assert [g["count"] for g in groups] == [g.count for g in proto.instance_group]
    assert groups[1]["gpus"] == list(proto.instance_group[1].gpus) == [0, 1]
    delay = parsed["dynamic_batching"]["max_queue_delay_microseconds"]
    assert delay == proto.dynamic_batching.max_queue_delay_microseconds


def test_what_render_writes_protobuf_and_parse_read_alike():
    config = {
        "name": 'a "quoted" name',
        "max_batch_size": 32,
        "version_policy": {"latest": {"num_versions": 2}},
        "input": [
            {"name": "x", "data_type": "TYPE_FP32", "dims": [1, 16, 16]},
            {"name": "y", "data_type": "TYPE_INT64", "dims": [4]},
        ],
        "instance_group": [{"kind": "KIND_CPU", "count": 2}, {"kind": "KIND_CPU", "count": 1}],
    }
    text = pbtxt.render(config)
    assert pbtxt.parse(text) == config
    proto = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert proto.name == config["name"] and proto.version_policy.latest.num_versions == 2
    assert [list(i.dims) for i in proto.input] == [[1, 16, 16], [4]]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: 'x'\ninput {\n  dims: 3\n", "ends before a closing '}'"),
        ("name: 'x'\n}\n", "line 2"),
        ("name:\n", "without a value"),
        ("dims: [1, 2\n", "closing ']'"),
        ('name: "unterminated\n', "line 1"),
    ],
)
def test_broken_text_names_where(text, where):
    with pytest.raises(pbtxt.PbtxtError, match=where.replace("[", r"\[").replace("]", r"\]")):
        pbtxt.parse(text)
