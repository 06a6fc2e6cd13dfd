"""fp16 models for GPUs: weights and activations in half precision, each LayerNorm2d's
statistics in fp32 (Casts around them), inputs and outputs in fp32 so that clients do not change.

A channel mean and variance summed in fp16 lose the bits that the normalisation then divides
by, so the statistics nodes (``fusion.islands``) stay fp32; onnxconverter-common inserts the
Casts at their boundary.
"""

from __future__ import annotations

import warnings

import onnx
from onnxconverter_common.float16 import convert_float_to_float16

from ln2d.export import metadata
from ln2d.export.fusion.islands import statistics_nodes


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model in fp16 but for its norms' statistics, with fp32 inputs and outputs."""
    keep_float, sites = statistics_nodes(model)
    with warnings.catch_warnings():
        # It warns once per weight below fp16's range that it clamps to 1e-7, as documented.
        warnings.filterwarnings("ignore", message=".*will be truncated to", category=UserWarning)
        half = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep_float)
    metadata.write(half, {"precision": {"precision": "fp16", "float_sites": sites}})
    onnx.checker.check_model(half, full_check=True)
    return half
