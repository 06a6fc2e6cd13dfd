"""Which PyTorch module wrote a site: read from the exporters' own records of module scopes.

The dynamo exporter stores each node's module path in its ``pkg.torch.onnx.name_scopes``
metadata; TorchScript writes it into the node's name (``/stages/stages.0/norm/Div``). A site
belongs to the module that produced its output, provided that module does nothing more with it:
then the module's output *is* the norm's output, and parity can hook it. A norm written inline
in a bigger module's forward has no module of its own (None).
"""

from __future__ import annotations

import ast

import onnx

NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def site_modules(model: onnx.ModelProto, outputs: list[str]) -> dict[str, str | None]:
    """For each site output value, the qualified name of the module whose output it is."""
    producers = {value: node for node in model.graph.node for value in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for value in node.input:
            consumers.setdefault(value, []).append(node)
    found = {}
    for output in outputs:
        path = scope_path(producers[output]) if output in producers else []
        module = path[-1] if path else None
        inside = [c for c in consumers.get(output, []) if module in scope_path(c)]
        found[output] = None if inside else module
    return found


def scope_path(node: onnx.NodeProto) -> list[str]:
    """The qualified names of the modules around ``node``, outermost first."""
    meta = {p.key: p.value for p in node.metadata_props}
    if NAME_SCOPES in meta:
        names = ast.literal_eval(meta[NAME_SCOPES])  # ['', 'stem', 'stem.1', 'mean']
        return [n for n in names[:-1] if n]
    qualified, path = "", []
    for part in node.name.split("/")[1:-1]:  # TorchScript: /stem/stem.1/ReduceMean
        qualified = (
            part if part.startswith(qualified + ".") or not qualified else f"{qualified}.{part}"
        )
        path.append(qualified)
    return path
