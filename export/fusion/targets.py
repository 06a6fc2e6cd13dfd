"""Which fused form each site gets, per target runtime, and why.

The rules come from ``ln2d bench`` (docs/benchmarks.md has the tables they rest on). A rule
sees only what is fixed at export time: the site's channels, what produces its input, the form
it came in and the graph's opset. Batch and spatial size stay dynamic, so each rule must hold
across them; ``ln2d fuse --tune`` measures instead, on the shapes you give it.
"""

from __future__ import annotations

from collections.abc import Callable

from ln2d import native
from ln2d.constants import DEFAULT_TARGET
from ln2d.errors import UserError
from ln2d.export.fusion.forms import exists_at
from ln2d.export.fusion.report import Site

FormChoice = Callable[[Site], tuple[str, str]]  # site -> (form name, why)


def _cpu(site: Site) -> tuple[str, str]:
    if site.status == "already_fused":
        return site.original, (
            "cpu: kept as it came; no standard-op form was measured faster than an already "
            "fused LayerNormalization in every context (--tune measures this model)"
        )
    if site.centrable:
        return "centred_conv", "cpu: input is a Conv output, centred by its weights (no mean pass)"
    return "reduce_div", (
        "cpu: kept in its own arithmetic (Mul for Pow); no other form was faster in every "
        "context measured (--tune measures this model)"
    )


def _layernorm(target: str) -> FormChoice:
    def choose(site: Site) -> tuple[str, str]:
        if exists_at("transpose_layernorm", site.opset):
            return "transpose_layernorm", f"{target}: one LayerNormalization kernel"
        return "reduce_moments", (
            f"{target}: opset {site.opset} has no LayerNormalization (17+), so the fewest "
            "passes in its ops; fuse --opset 17 for one kernel"
        )

    return choose


def _cpu_native(site: Site) -> tuple[str, str]:
    if not native.available():
        raise UserError(str(native.missing()))
    return "native", "cpu-native: ln2d's own kernel (ai.ln2d::LayerNorm2d, needs ln2d.native)"


TARGETS: dict[str, FormChoice] = {
    "cpu": _cpu,
    # Needs the library wherever the model runs (ln2d serve, parity and bench register it).
    "cpu-native": _cpu_native,
    # LayerNormalization is one fused CUDA kernel: on an H100 the fastest fp32 form at every
    # point ln2d bench measured (docs/benchmarks.md, "GPU (CUDA)").
    "cuda": _layernorm("cuda"),
    # The standard fused-norm op, which every runtime with opset 17 implements as one kernel.
    "portable": _layernorm("portable"),
}


__all__ = ["DEFAULT_TARGET", "TARGETS", "FormChoice", "chooser", "usable"]


def usable(target: str) -> bool:
    """Whether this install can fuse for ``target`` (cpu-native needs the compiled library)."""
    return target != "cpu-native" or native.available()


def chooser(target: str) -> FormChoice:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[target]
