"""PyTorch eager against ONNX Runtime on each provider, and the fused graph against the module
exported afresh without fusion (``check_parity``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from ln2d.constants import PROVIDERS
from ln2d.errors import UserError
from ln2d.export import metadata
from ln2d.export.onnx_export import INPUT_NAME
from ln2d.export.onnx_io import load_model
from ln2d.export.parity.bisect import bisect
from ln2d.export.parity.compare import compare, gates
from ln2d.export.parity.inputs import checkpoint_inputs
from ln2d.export.parity.report import Comparison, ParityOptions, ParityReport, providers
from ln2d.runtime import SessionSettings, available_providers, open_session
from ln2d.training import predict_logits


def run_parity_checks(checkpoint, model_path: Path, options: ParityOptions):
    """``ln2d parity`` for a SimpleLN_CNN checkpoint: its own data, then ``check_parity``."""
    x, labels = checkpoint_inputs(checkpoint, options.data)
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
    limits = gates(options, dtype, precision)
    x = np.asarray(inputs).astype(dtype)
    reference = predict_logits(model, x.astype(np.float32))
    unfused = _unfused(model, onnx_model, x)
    requested, listed = providers(options.providers)
    report = ParityReport(
        str(model_path),
        options.data,
        len(x),
        limits.atol,
        limits.rtol,
        precision,
        limits.max_drop,
        limits.min_agreement,
        limits.elementwise,
        requested=requested,
    )
    for provider in listed:
        if provider not in available_providers():
            why = f"skipped: no {PROVIDERS[provider]} in this onnxruntime build / machine"
            report.comparisons.append(Comparison(f"torch vs onnx[{provider}]", provider, why))
            continue
        session = _session(onnx_model, provider)
        outputs = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float32)
        torch_vs = compare(
            f"torch vs onnx[{provider}]", provider, outputs, reference, limits, labels
        )
        if torch_vs.status != "pass" and options.bisect:
            torch_vs.bisect = bisect(model, onnx_model, provider, x, limits.atol, limits.rtol)
        base = _session(unfused, provider).run(None, {INPUT_NAME: x.astype(np.float32)})[0]
        fused_vs = compare(
            f"fused vs unfused onnx[{provider}]", provider, outputs, base, limits, labels
        )
        report.comparisons += [torch_vs, fused_vs]
    return report


def _unfused(model: torch.nn.Module, onnx_model: onnx.ModelProto, x: np.ndarray):
    """The module exported afresh, decomposed, at the file's opset (18 at least)."""
    from ln2d.export.onnx_export import to_onnx

    opset = next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))
    example = torch.from_numpy(x[:2].astype(np.float32))
    return to_onnx(model, example, max(opset, 18), fuse=False, target="cpu")[0]


def _session(model: onnx.ModelProto, provider: str):
    try:
        return open_session(model, SessionSettings(provider))
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise UserError(" ".join(str(exc).split())) from None


def _input_dtype(model: onnx.ModelProto):
    elem = model.graph.input[0].type.tensor_type.elem_type
    return onnx.helper.tensor_dtype_to_np_dtype(elem).type


def _precision(model: onnx.ModelProto) -> str:
    return metadata.read(model).precision_name
