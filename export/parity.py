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
import torch

from ln2d.checkpoint import Checkpoint
from ln2d.constants import PROVIDERS
from ln2d.data import Preprocessing
from ln2d.errors import UserError
from ln2d.export import metadata
from ln2d.export.numerics import close, tolerance
from ln2d.export.onnx_export import INPUT_NAME
from ln2d.export.onnx_io import load_model
from ln2d.runtime import SessionSettings, available_providers, open_session
from ln2d.training import predict_logits


@dataclass(frozen=True)
class ParityOptions:
    providers: str = "auto"
    data: str = "digits"
    atol: float | None = None
    rtol: float | None = None
    bisect: bool = False
    max_accuracy_drop: float | None = None  # points; default for int8: REDUCED_GATES
    min_agreement: float | None = None  # top-1, 0..1; default for int8: REDUCED_GATES


# A reduced-precision model is not elementwise close to fp32 by design: it is held to the
# answers instead (accuracy drop in points, top-1 agreement), with these defaults.
REDUCED_GATES = {"int8": (0.5, 0.99)}


@dataclass(frozen=True)
class Gates:
    """What a comparison must reach: elementwise closeness, or (reduced precision, or when
    asked) answers: accuracy within ``max_drop`` points and ``min_agreement`` top-1."""

    atol: float
    rtol: float
    elementwise: bool
    max_drop: float | None
    min_agreement: float | None


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


def run_parity_checks(checkpoint: Checkpoint, model_path: Path, options: ParityOptions):
    """``ln2d parity`` for a SimpleLN_CNN checkpoint: its own data, then ``check_parity``."""
    x, labels = _inputs(checkpoint, options.data)
    return check_parity(checkpoint.model(), model_path, x, options, labels=labels)


def check_parity(
    model: torch.nn.Module,
    model_path: str | Path,
    inputs: np.ndarray,
    options: ParityOptions | None = None,
    labels: np.ndarray | None = None,
    **option_fields,
) -> ParityReport:
    """Compare ``model`` (PyTorch, eval mode) with the ONNX file on ``inputs`` (N, C, H, W),
    per provider, and the file with the module exported afresh without fusion. Any output
    shape: top-1 agreement and accuracy only where the output is (N, classes). Options come as
    a ParityOptions or as its fields (``providers="auto", bisect=True``, ...)."""
    options = options or ParityOptions(**{"data": "inputs", **option_fields})
    model = model.eval()
    onnx_model = load_model(Path(model_path))
    dtype = _input_dtype(onnx_model)
    precision = _precision(onnx_model)
    gates = _gates(options, dtype, precision)
    x = np.asarray(inputs).astype(dtype)
    reference = predict_logits(model, x.astype(np.float32))
    unfused = _unfused(model, onnx_model, x)
    requested, listed = _providers(options.providers)
    report = ParityReport(
        str(model_path),
        options.data,
        len(x),
        gates.atol,
        gates.rtol,
        precision,
        gates.max_drop,
        gates.min_agreement,
        gates.elementwise,
        requested=requested,
    )
    for provider in listed:
        if provider not in available_providers():
            why = f"skipped: no {PROVIDERS[provider]} in this onnxruntime build / machine"
            report.comparisons.append(Comparison(f"torch vs onnx[{provider}]", provider, why))
            continue
        session = _session(onnx_model, provider)
        outputs = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float32)
        torch_vs = _compare(
            f"torch vs onnx[{provider}]", provider, outputs, reference, gates, labels
        )
        if torch_vs.status != "pass" and options.bisect:
            torch_vs.bisect = bisect(model, onnx_model, provider, x, gates.atol, gates.rtol)
        base = _session(unfused, provider).run(None, {INPUT_NAME: x.astype(np.float32)})[0]
        fused_vs = _compare(
            f"fused vs unfused onnx[{provider}]", provider, outputs, base, gates, labels
        )
        report.comparisons += [torch_vs, fused_vs]
    return report


def model_inputs(model_path: Path, data: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs for a user's model, shaped and normalised as its ``ln2d.input`` metadata says:
    random ones, the digits, or an image folder (labels where its classes are the model's)."""
    from ln2d.data import load_digits, load_image_folder

    meta = metadata.read(load_model(Path(model_path)))
    if meta.input is None:
        raise UserError(f"{model_path} has no ln2d.input metadata: export it with ln2d export")
    spec = meta.input
    pre = Preprocessing(spec.channels, spec.height, spec.width, spec.mean, spec.std)
    if data == "random":
        return _random_inputs(pre), None
    labels = meta.labels or ()
    if data == "digits":
        dataset = load_digits(pre.height, pre.channels)
    else:
        dataset = load_image_folder(Path(data), pre.channels, pre.height, pre.width)
    known = dataset.labels == labels
    return pre(dataset.images), dataset.targets if known else None


def _unfused(model: torch.nn.Module, onnx_model: onnx.ModelProto, x: np.ndarray):
    """The module exported afresh, decomposed, at the file's opset (18 at least)."""
    from ln2d.export.onnx_export import to_onnx

    opset = next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))
    example = torch.from_numpy(x[:2].astype(np.float32))
    return to_onnx(model, example, max(opset, 18), fuse=False, target="cpu")[0]


def _providers(spec: str) -> tuple[list[str], list[str]]:
    """(requested, listed): 'auto' requests cpu and cuda-if-present, and lists both."""
    if spec == "auto":
        has_cuda = "cuda" in available_providers()
        return (["cpu", "cuda"] if has_cuda else ["cpu"]), ["cpu", "cuda"]
    names = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROVIDERS]
    if unknown or not names:
        raise UserError(f"unknown provider(s) {unknown or spec!r}: choose from cpu, cuda, auto")
    return names, names


def _session(model: onnx.ModelProto, provider: str):
    try:
        return open_session(model, SessionSettings(provider))
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise UserError(" ".join(str(exc).split())) from None


def _input_dtype(model: onnx.ModelProto):
    elem = model.graph.input[0].type.tensor_type.elem_type
    return onnx.helper.tensor_dtype_to_np_dtype(elem).type


def _inputs(checkpoint: Checkpoint, data: str) -> tuple[np.ndarray, np.ndarray | None]:
    from ln2d.commands import checkpoint_eval_data

    if data == "random":
        return _random_inputs(checkpoint.preprocessing), None
    return checkpoint_eval_data(checkpoint, None if data == "digits" else Path(data))


def _random_inputs(pre: Preprocessing) -> np.ndarray:
    """32 standard-normal inputs of the model's shape (``--data random``)."""
    shape = (32, pre.channels, pre.height, pre.width)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _precision(model: onnx.ModelProto) -> str:
    return metadata.read(model).precision_name


def _gates(options: ParityOptions, dtype, precision: str) -> Gates:
    # An fp16 model keeps fp32 inputs and outputs, but its numbers are fp16's.
    atol, rtol = tolerance(np.float16 if precision == "fp16" else dtype)
    # 0 is a tolerance (exact), not a request for the default.
    atol = atol if options.atol is None else options.atol
    rtol = rtol if options.rtol is None else options.rtol
    max_drop, min_agreement = REDUCED_GATES.get(precision, (None, None))
    return Gates(
        atol,
        rtol,
        elementwise=precision not in REDUCED_GATES,
        max_drop=max_drop if options.max_accuracy_drop is None else options.max_accuracy_drop,
        min_agreement=min_agreement if options.min_agreement is None else options.min_agreement,
    )


def _compare(name, provider, actual, expected, gates: Gates, labels=None) -> Comparison:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = np.maximum(np.abs(expected), np.finfo(np.float32).tiny)
    a, e = actual.reshape(-1).astype(np.float64), expected.reshape(-1).astype(np.float64)
    cosine = float(a @ e / max(np.linalg.norm(a) * np.linalg.norm(e), 1e-30))
    agreement = _agreement(actual, expected)
    accuracy = _accuracy(actual, labels)
    drop = None if accuracy is None else 100 * (_accuracy(expected, labels) - accuracy)
    passed = (
        (not gates.elementwise or close(actual, expected, gates.atol, gates.rtol))
        and (gates.min_agreement is None or (agreement or 0.0) >= gates.min_agreement)
        and (gates.max_drop is None or drop is None or drop <= gates.max_drop)
    )
    return Comparison(
        name,
        provider,
        "pass" if passed else "FAIL",
        max_abs=float(diff.max()),
        max_rel=float((diff / scale).max()),
        mean_abs=float(diff.mean()),
        p99_abs=float(np.percentile(diff, 99)),
        cosine=cosine,
        top1_agreement=agreement,
        accuracy=accuracy,
    )


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or outputs.ndim != 2:
        return None
    return float((outputs.argmax(1) == labels).mean())


def _agreement(actual: np.ndarray, expected: np.ndarray) -> float | None:
    """Top-1 agreement of (N, classes) outputs; None for other shapes (images, features)."""
    if actual.ndim != 2:
        return None
    return float((actual.argmax(1) == expected.argmax(1)).mean())


def _sites(model: onnx.ModelProto) -> list[dict]:
    """Each fused site's output value and module: from the export's ``ln2d.fusion`` metadata,
    which names them for every form, else by matching again (fused sites show as already
    fused)."""
    from ln2d.export.fusion import match

    summary = metadata.read(model).fusion or {}
    recorded = [s for s in summary.get("sites", []) if s["status"] != "rejected"]
    if recorded:
        return recorded
    return [{"output": s.output, "module": s.module} for s in match(model).report.fused]


def bisect(torch_model, model, provider, x, atol, rtol) -> dict:
    """Expose each LayerNorm2d site's output in the graph and compare it with the output of
    the module it came from (hooked); name the first site that diverges, by module."""
    sites = [dict(s, index=i) for i, s in enumerate(_sites(model))]
    hooked = [s for s in sites if s.get("module") and _has_module(torch_model, s["module"])]
    if not hooked:
        return {"verdict": "no LayerNorm2d site maps to a module of its own: nothing to hook"}
    captured: dict[str, list[np.ndarray]] = {s["module"]: [] for s in hooked}

    def keep(name):
        # Copy: an in-place op that follows (ReLU) would change the tensor the hook saw.
        return lambda module, args, out: captured[name].append(out.detach().numpy().copy())

    handles = [
        torch_model.get_submodule(s["module"]).register_forward_hook(keep(s["module"]))
        for s in hooked
    ]
    try:
        predict_logits(torch_model, x.astype(np.float32))
    finally:
        for handle in handles:
            handle.remove()
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    names = [s["output"] for s in hooked]
    probed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = _session(probed, provider)
    values = session.run(names, {session.get_inputs()[0].name: x})
    results = []
    for site, got in zip(hooked, values, strict=True):
        want = np.concatenate(captured[site["module"]])
        err = float(np.abs(got.astype(np.float64) - want).max())
        ok = close(got, want, atol, rtol)
        results.append(
            {"site": site["index"], "module": site["module"], "output": site["output"],
             "max_abs": err, "ok": ok}
        )  # fmt: skip
    first = next((r for r in results if not r["ok"]), None)
    skipped = len(sites) - len(hooked)
    verdict = (
        "every LayerNorm2d site agrees: the divergence is elsewhere"
        if first is None
        else f"first divergence at LayerNorm2d site {first['site']} ({first['module']}): "
        f"max abs error {first['max_abs']:.3g}"
    )
    if skipped:
        verdict += f" ({skipped} inline site(s) without a module of their own not checked)"
    return {"verdict": verdict, "first_diverging_site": first, "sites": results}


def _has_module(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
