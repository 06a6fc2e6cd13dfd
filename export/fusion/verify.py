"""The gate every fused model passes before it is written: onnx.checker with full shape
inference, a session in ONNX Runtime (CPU), and the same numbers as the input graph on random
inputs at two shapes. A failure names the step and, where it can be told, the site."""

from __future__ import annotations

import re

import numpy as np
import onnx

from ln2d import native
from ln2d.errors import CheckFailed
from ln2d.export.fusion.islands import SITE_PREFIX
from ln2d.export.fusion.report import FusionReport
from ln2d.export.numerics import close, numpy_type, tolerance

# Sizes given to symbolic dimensions, per probe: (the first dimension, every other one).
# Two probes, so a graph that only works at its export shape is caught; the fallbacks serve
# models whose smallest input is larger (e.g. five stride-2 stages).
PROBES = ((1, (32, 32)), (2, (48, 40)), (1, (64, 64)), (2, (96, 80)), (1, (224, 224)))


class FusionError(CheckFailed):
    """The fused model failed the gate: nothing is written."""


def verify(original: onnx.ModelProto, fused: onnx.ModelProto, report: FusionReport) -> None:
    """Raise FusionError unless ``fused`` is valid, loads, and computes what ``original`` does.
    Records each step in ``report.verification``."""
    steps = report.verification
    try:
        onnx.checker.check_model(fused, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise _failure("onnx.checker", exc) from exc
    steps["onnx.checker"] = "pass"
    try:
        session = _session(fused)
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        if not _loads(original):  # e.g. custom ops for another runtime: not ours to judge
            steps["onnxruntime"] = steps["numerics"] = "not checked: the input does not load"
            return
        raise _failure("onnxruntime load", exc) from exc
    steps["onnxruntime"] = "pass"
    steps["numerics"] = _same_numbers(original, fused, session, report)


def _loads(model: onnx.ModelProto) -> bool:
    try:
        _session(model)
    except Exception:
        return False
    return True


def _failure(step: str, exc: Exception) -> FusionError:
    text = " ".join(str(exc).split())
    site = re.search(re.escape(SITE_PREFIX) + r"\d+", text)
    where = f"site {site.group(0)}" if site else "outside the fused sites"
    return FusionError(f"fused model failed {step} ({where}): {text[:300]}")


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = native.session_options()
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _same_numbers(original, fused, fused_session, report: FusionReport) -> dict:
    reference = _session(original)
    checked = []
    for batch, sizes in PROBES:
        feeds = _random_feeds(reference, batch, sizes)
        try:
            expected = reference.run(None, feeds)
        except Exception:  # the input model does not run at this shape: try the next one
            continue
        got = fused_session.run(None, feeds)
        for want, have in zip(expected, got, strict=True):
            if not _within(have, want):
                raise FusionError(_numbers_message(original, fused, feeds, report))
        checked.append([list(v.shape) for v in feeds.values()])
        if len(checked) == 2:
            return {"status": "pass", "shapes": checked}
    return {"status": "not checked: the input model ran at fewer than two probe shapes"}


def _within(actual: np.ndarray, expected: np.ndarray) -> bool:
    """The dtype's tolerance, absolute part scaled by the output's magnitude: random inputs
    through a deep random network give logits far from 1. Where the input graph itself gives
    NaN or Inf (a network that is not a LayerNorm can, on random input), the fused graph must
    give the same there."""
    if not np.issubdtype(expected.dtype, np.floating):
        return bool(np.array_equal(actual, expected))
    finite = np.isfinite(expected)
    if not np.array_equal(actual[~finite], expected[~finite], equal_nan=True):
        return False
    actual, expected = actual[finite], expected[finite]
    atol, rtol = tolerance(expected.dtype)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return close(actual, expected, atol * scale, rtol)


def _random_feeds(session, batch: int, sizes: tuple[int, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [_size(dim, axis, batch, sizes) for axis, dim in enumerate(value.shape)]
        dtype = numpy_type(value.type)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype)
    return feeds


def _size(dim, axis: int, batch: int, sizes: tuple[int, int]) -> int:
    """A static dimension as it is; a symbolic one: the batch first, then H and W (NCHW)."""
    if isinstance(dim, int):
        return dim
    return batch if axis == 0 else sizes[axis % 2]


def _numbers_message(original, fused, feeds, report: FusionReport) -> str:
    """Which site's output first differs: both graphs expose every site's output by name."""
    names = [s.output for s in report.fused]
    if not names:  # ONNX Runtime would answer an empty list of names with every output
        return "fused model failed numerics (no site was fused): outputs differ"
    outputs = [_run_with_outputs(m, names, feeds) for m in (original, fused)]
    for site, want, have in zip(report.fused, *outputs, strict=True):
        if not _within(have, want):
            err = float(np.abs(have.astype(np.float64) - want).max())
            return (
                f"fused model failed numerics (site {site.name}, form {site.form}): "
                f"max abs error {err:.3g} against the input graph"
            )
    return "fused model failed numerics (outside the fused sites): outputs differ"


def _run_with_outputs(model: onnx.ModelProto, names: list[str], feeds) -> list[np.ndarray]:
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    known = {o.name for o in probed.graph.output}
    probed.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in known
    )
    return _session(probed).run(names, feeds)
