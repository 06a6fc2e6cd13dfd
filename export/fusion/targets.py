"""Which fused form each site gets, per target runtime, and why.

The rules come from ``ln2d bench`` (docs/benchmarks.md has the tables they rest on). A rule
sees only what is fixed at export time: the site's channels and what produces its input.
Batch and spatial size stay dynamic, so each rule must hold across them.
"""

from __future__ import annotations

from collections.abc import Callable

from export.fusion.report import Site

FormChoice = Callable[[Site], tuple[str, str]]  # site -> (form name, why)


def _cpu(site: Site) -> tuple[str, str]:
    if site.centrable:
        return "centred_conv", "cpu: input is a Conv output, centred by its weights (no mean pass)"
    return "reduce_moments", "cpu: decomposed's reductions, Mul for Pow and Div, affine in one pass"


def _layernorm(target: str) -> FormChoice:
    def choose(site: Site) -> tuple[str, str]:
        return "transpose_layernorm", f"{target}: one LayerNormalization kernel"

    return choose


TARGETS: dict[str, FormChoice] = {
    "cpu": _cpu,
    # Not measured (no GPU was available): LayerNormalization is one fused CUDA kernel, and
    # transposes cost little next to it on a GPU.
    "cuda": _layernorm("cuda"),
    # The standard fused-norm op, which every runtime with opset 17 implements as one kernel.
    "portable": _layernorm("portable"),
}
DEFAULT_TARGET = "portable"


def chooser(target: str) -> FormChoice:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[target]
