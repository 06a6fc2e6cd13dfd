"""PyTorch eager vs ONNX Runtime per provider, and the fused graph vs the unfused one.

Exit status semantics live in the CLI: ``ParityReport.passed`` is true only when every requested
comparison ran and passed. A provider that is requested but absent is *skipped*, which fails the
gate; with ``--providers auto`` (the default) an absent CUDA is listed as skipped, not requested.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ln2d.checkpoint import Checkpoint
from ln2d.constants import PROVIDERS
from ln2d.errors import UserError
from ln2d.export import metadata
from ln2d.export.numerics import close, tolerance
from ln2d.export.onnx_export import INPUT_NAME
from ln2d.export.onnx_io import load_model


@dataclass(frozen=True)
class ParityOptions:
    providers: str = "auto"
    data: str = "digits"
    atol: float | None = None
    rtol: float | None = None
    bisect: bool = False


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
        head = (
            f"parity: {self.model} on {self.samples} inputs ({self.data}), "
            f"atol={self.atol:g} rtol={self.rtol:g}"
        )
        rows = [
            head,
            "| comparison | status | max abs | max rel | mean abs | p99 abs | cosine "
            "| top-1 agree |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in self.comparisons:
            if c.max_abs is None:
                rows.append(f"| {c.name} | {c.status} | | | | | | |")
                continue
            rows.append(
                f"| {c.name} | {c.status} | {c.max_abs:.2e} | {c.max_rel:.2e} | "
                f"{c.mean_abs:.2e} | {c.p99_abs:.2e} | {c.cosine:.7f} | {c.top1_agreement:.4f} |"
            )
            if c.bisect:
                rows.append(f"  bisect: {c.bisect['verdict']}")
        rows.append("PASS" if self.passed else "FAIL")
        return "\n".join(rows)


def run_parity_checks(checkpoint: Checkpoint, model_path: Path, options: ParityOptions):
    from ln2d.export.onnx_export import export_checkpoint
    from ln2d.training import predict_logits

    model = load_model(model_path)
    dtype = _input_dtype(model)
    atol, rtol = tolerance(dtype)
    # 0 is a tolerance (exact), not a request for the default.
    atol = atol if options.atol is None else options.atol
    rtol = rtol if options.rtol is None else options.rtol
    x, labels = _inputs(checkpoint, options.data)
    x = x.astype(dtype)
    reference = predict_logits(checkpoint.model(), x.astype(np.float32))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    unfused, _ = export_checkpoint(checkpoint, max(opset, 18), fuse=False)
    requested, listed = _providers(options.providers)
    report = ParityReport(str(model_path), options.data, len(x), atol, rtol, requested=requested)
    for provider in listed:
        if PROVIDERS[provider] not in ort.get_available_providers():
            why = f"skipped: no {PROVIDERS[provider]} in this onnxruntime build / machine"
            report.comparisons.append(Comparison(f"torch vs onnx[{provider}]", provider, why))
            continue
        session = _session(model, provider)
        outputs = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float32)
        torch_vs = _compare(f"torch vs onnx[{provider}]", provider, outputs, reference, atol, rtol)
        if labels is not None:
            torch_vs.accuracy = float((outputs.argmax(1) == labels).mean())
        if torch_vs.status != "pass" and options.bisect:
            torch_vs.bisect = bisect(checkpoint, model, provider, x, atol, rtol)
        base = _session(unfused, provider).run(None, {INPUT_NAME: x.astype(np.float32)})[0]
        fused_vs = _compare(
            f"fused vs unfused onnx[{provider}]", provider, outputs, base, atol, rtol
        )
        report.comparisons += [torch_vs, fused_vs]
    return report


def _providers(spec: str) -> tuple[list[str], list[str]]:
    """(requested, listed): 'auto' requests cpu and cuda-if-present, and lists both."""
    if spec == "auto":
        has_cuda = PROVIDERS["cuda"] in ort.get_available_providers()
        return (["cpu", "cuda"] if has_cuda else ["cpu"]), ["cpu", "cuda"]
    names = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROVIDERS]
    if unknown or not names:
        raise UserError(f"unknown provider(s) {unknown or spec!r}: choose from cpu, cuda, auto")
    return names, names


def _session(model: onnx.ModelProto, provider: str) -> ort.InferenceSession:
    session = ort.InferenceSession(model.SerializeToString(), providers=[PROVIDERS[provider]])
    if session.get_providers()[0] != PROVIDERS[provider]:
        raise UserError(f"onnxruntime did not activate {PROVIDERS[provider]}")
    return session


def _input_dtype(model: onnx.ModelProto):
    elem = model.graph.input[0].type.tensor_type.elem_type
    return onnx.helper.tensor_dtype_to_np_dtype(elem).type


def _inputs(checkpoint: Checkpoint, data: str) -> tuple[np.ndarray, np.ndarray | None]:
    from ln2d.commands import checkpoint_eval_data

    if data == "random":
        pre = checkpoint.preprocessing
        rng = np.random.default_rng(0)
        return rng.standard_normal((32, pre.channels, pre.height, pre.width)), None
    return checkpoint_eval_data(checkpoint, None if data == "digits" else Path(data))


def _compare(name, provider, actual, expected, atol, rtol) -> Comparison:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = np.maximum(np.abs(expected), np.finfo(np.float32).tiny)
    a, e = actual.reshape(-1).astype(np.float64), expected.reshape(-1).astype(np.float64)
    cosine = float(a @ e / max(np.linalg.norm(a) * np.linalg.norm(e), 1e-30))
    return Comparison(
        name,
        provider,
        "pass" if close(actual, expected, atol, rtol) else "FAIL",
        max_abs=float(diff.max()),
        max_rel=float((diff / scale).max()),
        mean_abs=float(diff.mean()),
        p99_abs=float(np.percentile(diff, 99)),
        cosine=cosine,
        top1_agreement=float((actual.argmax(1) == expected.argmax(1)).mean()),
    )


def _site_outputs(model: onnx.ModelProto) -> list[str]:
    """Each fused site's output value: from the export's ``ln2d.fusion`` metadata, which
    names them for every form, else by fusing again (fused sites show as already fused)."""
    from ln2d.export.fusion import match

    summary = json.loads(metadata.read(model).get("fusion", "{}"))
    recorded = [s["output"] for s in summary.get("sites", []) if s["status"] != "rejected"]
    if recorded:
        return recorded
    return [s.output for s in match(model).report.fused]


def bisect(checkpoint, model, provider, x, atol, rtol) -> dict:
    """Expose each LayerNorm2d site's output in the graph; compare with the module's output."""
    import torch

    from ln2d.layers import LayerNorm2d

    outputs = _site_outputs(model)
    torch_model = checkpoint.model()
    norms = [m for m in torch_model.modules() if isinstance(m, LayerNorm2d)]
    if len(norms) != len(outputs):
        return {"verdict": f"cannot pair {len(outputs)} ONNX sites with {len(norms)} modules"}
    captured: list[np.ndarray] = []
    # Copy: the ReLU that follows runs in place on the very tensor the hook sees.
    hooks = [
        n.register_forward_hook(lambda m, i, o: captured.append(o.numpy().copy())) for n in norms
    ]
    with torch.inference_mode():
        torch_model(torch.from_numpy(x.astype(np.float32)))
    for hook in hooks:
        hook.remove()
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    for name in outputs:
        probed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = _session(probed, provider)
    values = session.run(outputs, {session.get_inputs()[0].name: x})
    sites = []
    for index, (name, got, want) in enumerate(zip(outputs, values, captured, strict=True)):
        err = float(np.abs(got.astype(np.float64) - want).max())
        ok = close(got, want, atol, rtol)
        sites.append({"site": index, "output": name, "max_abs": err, "ok": ok})
    first = next((s for s in sites if not s["ok"]), None)
    verdict = (
        "every LayerNorm2d site agrees: the divergence is elsewhere"
        if first is None
        else f"first divergence at LayerNorm2d site {first['site']} ({first['output']}): "
        f"max abs error {first['max_abs']:.3g}"
    )
    return {"verdict": verdict, "first_diverging_site": first, "sites": sites}
