"""The nodes of each fused site that compute its statistics: the ones reduced precision must
leave in float (INT8 quantization, fp16 conversion).

Fusion names every node of a site ``ln2d_site_N/...``. All of them compute the mean, the
variance or the normalisation, except two: the centred convolution of ``centred_conv``, which
is the layer's own Conv with centred weights (it reads from outside the site and computes the
norm's input, so it may be converted like any other layer), and ln2d's native op, which keeps
its statistics in fp32 or wider whatever its input type (it has an fp16 kernel).
"""

from __future__ import annotations

import onnx

from ln2d import native

SITE_PREFIX = "ln2d_site_"


def statistics_nodes(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The names of the nodes to keep in float, and of the sites they belong to."""
    nodes = [node for node in model.graph.node if node.name.startswith(SITE_PREFIX)]
    inside = {output for node in nodes for output in node.output}
    keep = [
        node.name
        for node in nodes
        if not (node.op_type == "Conv" and node.input[0] not in inside)
        and node.domain != native.DOMAIN
    ]
    sites = sorted({site_of(name) for name in keep}, key=lambda s: int(s[len(SITE_PREFIX) :]))
    return keep, sites


def site_of(node_name: str) -> str:
    """``ln2d_site_N`` for any node fusion wrote for site N."""
    return node_name.split("/")[0]
