"""fp16 models for GPUs: weights and activations in half precision, each LayerNorm2d's
statistics in fp32 (Casts around them), inputs and outputs in fp32 so that clients do not change.

A channel mean and variance summed in fp16 lose the bits that the normalisation then divides
by, so the statistics nodes (``fusion.site_nodes``) stay fp32; onnxconverter-common inserts the
Casts at their boundary. A site whose statistics one LayerNormalization computes needs no
island: for fp16 input it keeps its mean and variance in fp32 itself (``stash_type`` 1, the
default), so such a site (the cuda and portable targets' form) runs in fp16 with no Casts.
"""

from __future__ import annotations

import warnings

import onnx
from onnxconverter_common.float16 import convert_float_to_float16

from ln2d.export import metadata
from ln2d.export.fusion.site_nodes import site_of, statistics_nodes
from ln2d.metadata import ModelMetadata


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model in fp16 but for its norms' statistics, with fp32 inputs and outputs."""
    keep_float, sites = _islands(model)
    with warnings.catch_warnings():
        # It warns once per weight below fp16's range that it clamps to 1e-7, as documented.
        warnings.filterwarnings("ignore", message=".*will be truncated to", category=UserWarning)
        half = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep_float)
    _restore_float_constants(half, model)
    metadata.write(half, ModelMetadata(precision={"precision": "fp16", "float_sites": sites}))
    onnx.checker.check_model(half, full_check=True)
    return half


def _islands(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The statistics nodes to keep in fp32 and their sites, but for the sites whose statistics
    a LayerNormalization with fp32 stash computes."""
    keep, sites = statistics_nodes(model)
    widening = {
        site_of(node.name)
        for node in model.graph.node
        if node.op_type == "LayerNormalization"
        and site_of(node.name) in sites
        and _stash_type(node) == onnx.TensorProto.FLOAT
    }
    return [n for n in keep if site_of(n) not in widening], [s for s in sites if s not in widening]


def _stash_type(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "stash_type"), onnx.TensorProto.FLOAT)


def _restore_float_constants(half: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """The converter halves every initializer, then casts back to fp32 the ones fp32 nodes
    read, so a norm's epsilon, affine and 1/C weights would be rounded to fp16 on the way.
    Where only such Casts read an initializer, the fp32 original replaces it and the Casts go."""
    exact = {tensor.name: tensor for tensor in original.graph.initializer}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in half.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for index, tensor in enumerate(half.graph.initializer):
        casts = readers.get(tensor.name, [])
        if tensor.name in exact and casts and all(_casts_to_fp32(node) for node in casts):
            half.graph.initializer[index].CopyFrom(exact[tensor.name])
            for cast in casts:
                _bypass(half.graph, cast)
            _forget_type(half.graph, tensor.name)


def _forget_type(graph: onnx.GraphProto, name: str) -> None:
    """Drop the converter's fp16 value_info for ``name``, now an fp32 initializer."""
    stale = [info for info in graph.value_info if info.name == name]
    for info in stale:
        graph.value_info.remove(info)


def _casts_to_fp32(node: onnx.NodeProto) -> bool:
    to = next((a.i for a in node.attribute if a.name == "to"), None)
    return node.op_type == "Cast" and to == onnx.TensorProto.FLOAT


def _bypass(graph: onnx.GraphProto, cast: onnx.NodeProto) -> None:
    """Remove ``cast``; its readers read its input instead."""
    for node in graph.node:
        for position, name in enumerate(node.input):
            if name == cast.output[0]:
                node.input[position] = cast.input[0]
    graph.node.remove(cast)
