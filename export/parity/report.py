"""What ``ln2d parity`` found: the options it ran with, one Comparison per check, the report
with its table and JSON, and the summary across model files. Torch-free.

``ParityReport.passed`` is true only when every requested comparison ran and passed. A provider
that is requested but absent is *skipped*, which fails the gate; with ``--providers auto`` (the
default) an absent CUDA is listed as skipped, not requested.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ln2d.constants import PROVIDERS
from ln2d.errors import UserError
from ln2d.runtime import available_providers


@dataclass(frozen=True)
class ParityOptions:
    providers: str = "auto"
    data: str = "digits"
    atol: float | None = None
    rtol: float | None = None
    bisect: bool = False
    max_accuracy_drop: float | None = None  # points; default for int8: REDUCED_GATES
    min_agreement: float | None = None  # top-1, 0..1; default for int8: REDUCED_GATES


@dataclass
class Comparison:
    name: str  # e.g. "torch vs onnx[cpu]"
    provider: str
    status: str  # "pass" | "FAIL" | "skipped: <why>"
    max_abs: float | None = None
    max_rel: float | None = None
    mean_abs: float | None = None
    p99_abs: float | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    accuracy: float | None = None  # of the ONNX side, when labels are known
    bisect: dict | None = None


@dataclass
class ParityReport:
    model: str
    data: str
    samples: int
    atol: float
    rtol: float
    precision: str = "fp32"
    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    elementwise: bool = True  # held to atol/rtol (not for reduced precision: Gates says)
    comparisons: list[Comparison] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(
            c.status == "pass" for c in self.comparisons if c.provider in self.requested
        ) and any(c.status == "pass" for c in self.comparisons)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "passed": self.passed}, indent=2)

    def table(self) -> str:
        gates = [f"atol={self.atol:g} rtol={self.rtol:g}"] if self.elementwise else []
        if self.max_accuracy_drop is not None:
            gates.append(f"accuracy drop <= {self.max_accuracy_drop:g} points")
        if self.min_agreement is not None:
            gates.append(f"top-1 agreement >= {self.min_agreement:g}")
        head = (
            f"parity: {self.model} ({self.precision}) on {self.samples} inputs ({self.data}); "
            f"gates: {', '.join(gates)}"
        )
        rows = [
            head,
            "| comparison | status | max abs | max rel | mean abs | p99 abs | cosine "
            "| top-1 agree | accuracy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for c in self.comparisons:
            if c.max_abs is None:
                rows.append(f"| {c.name} | {c.status} | | | | | | | |")
                continue
            agree = "" if c.top1_agreement is None else f"{c.top1_agreement:.4f}"
            rows.append(
                f"| {c.name} | {c.status} | {c.max_abs:.2e} | {c.max_rel:.2e} | "
                f"{c.mean_abs:.2e} | {c.p99_abs:.2e} | {c.cosine:.7f} | {agree} | "
                f"{_percent(c.accuracy)} |"
            )
            if c.bisect:
                rows.append(f"  bisect: {c.bisect['verdict']}")
        rows.append("PASS" if self.passed else "FAIL")
        return "\n".join(rows)


def precision_summary(reports: list[ParityReport]) -> str:
    """One row per model file: its precision against PyTorch on ONNX Runtime CPU."""
    rows = [
        "| model | precision | status | accuracy | top-1 agreement with PyTorch | max abs "
        "| mean abs | p99 abs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        (cpu,) = [c for c in report.comparisons if c.name == "torch vs onnx[cpu]"] or [None]
        if cpu is None or cpu.max_abs is None:
            rows.append(f"| {report.model} | {report.precision} | not run on cpu | | | | | |")
            continue
        rows.append(
            f"| {report.model} | {report.precision} | {cpu.status} | {_percent(cpu.accuracy)} | "
            f"{_percent(cpu.top1_agreement)} | {cpu.max_abs:.2e} | {cpu.mean_abs:.2e} | "
            f"{cpu.p99_abs:.2e} |"
        )
    return "\n".join(rows)


def _percent(fraction: float | None) -> str:
    return "" if fraction is None else f"{100 * fraction:.2f} %"


def providers(spec: str) -> tuple[list[str], list[str]]:
    """(requested, listed): 'auto' requests cpu and cuda-if-present, and lists both."""
    if spec == "auto":
        has_cuda = "cuda" in available_providers()
        return (["cpu", "cuda"] if has_cuda else ["cpu"]), ["cpu", "cuda"]
    names = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROVIDERS]
    if unknown or not names:
        raise UserError(f"unknown provider(s) {unknown or spec!r}: choose from cpu, cuda, auto")
    return names, names
