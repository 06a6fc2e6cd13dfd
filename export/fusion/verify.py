"""The gate every fused model passes before it is written: onnx.checker with full shape
inference, a session in ONNX Runtime (CPU), the same numbers as the input graph on random
inputs at two shapes, and the parity record the model will carry. A failure names the step
and, where it can be told, the site.

A graph that rounds its values to fp16 on the way (an fp32 network storing activations in
fp16 around its norms) turns a last-bit fp32 difference before a Cast into a whole fp16 step
after it, and which values sit on a rounding edge depends on the CPU's kernels. There the gate
judges each site by the precision its output is kept in: every site alone, fed the input
graph's own values, within fp32's tolerance, and the outputs within fp16's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from ln2d import machine
from ln2d.errors import CheckFailed
from ln2d.export.fusion.report import FusionReport
from ln2d.export.fusion.site_nodes import SITE_PREFIX, site_of
from ln2d.export.numerics import close, numpy_type, stored_precision, tolerance
from ln2d.parity_record import ParityRecord, replay
from ln2d.runtime import SessionSettings, open_session

# Sizes given to symbolic dimensions, per probe: (the first dimension, every other one).
# Two probes, so a graph that only works at its export shape is caught; the fallbacks serve
# models whose smallest input is larger (e.g. five stride-2 stages).
PROBES = ((1, (32, 32)), (2, (48, 40)), (1, (64, 64)), (2, (96, 80)), (1, (224, 224)))


# A model in memory, or a file: the form for models with external data, whichever size. The
# checker and ONNX Runtime then read the file, with its data, from its own folder.
ModelRef = onnx.ModelProto | Path
# The input graph's outputs at the probe shapes: (feeds, outputs) per probe that ran.
Expected = list[tuple[dict, list[np.ndarray]]]


class FusionError(CheckFailed):
    """The fused model failed the gate: nothing is written."""


def verify(
    original: ModelRef,
    fused: ModelRef,
    report: FusionReport,
    expected: Expected | None = None,
    record: ParityRecord | None = None,
) -> None:
    """Raise FusionError unless ``fused`` is valid, loads, computes what ``original`` does
    (``expected``: its outputs, from ``reference`` ahead of time) and meets ``record``.
    Records each step in ``report.verification``. One session lives at a time: the input's
    outputs are computed first, so a large model is held once, not twice."""
    steps = report.verification
    try:
        onnx.checker.check_model(str(fused) if isinstance(fused, Path) else fused, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise _failure("onnx.checker", exc) from exc
    steps["onnx.checker"] = "pass"
    expected = reference(original) if expected is None else expected
    try:
        session = _session(fused)
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        if expected is None:  # e.g. custom ops for another runtime: not ours to judge
            steps["onnxruntime"] = steps["numerics"] = "not checked: the input does not load"
            return
        raise _failure("onnxruntime load", exc) from exc
    steps["onnxruntime"] = "pass"
    if expected is None:
        steps["numerics"] = "not checked: the input does not load"
        return
    if len(expected) < 2:
        steps["numerics"] = {
            "status": "not checked: the input model ran at fewer than two probe shapes"
        }
        return
    rule = "the outputs within their dtype's tolerance"
    feeds = _mismatch(session, expected)
    if feeds is not None:
        narrow = stored_precision(_graph(original))
        failure = (
            _numbers_message(original, fused, feeds, report)
            if narrow is None or _mismatch(session, expected, narrow) is not None
            else _failure_alone(original, fused, report, feeds)
        )
        if failure is not None:
            del session
            raise FusionError(failure)
        rule = (
            f"each site alone within its dtype's tolerance, the outputs within "
            f"{np.dtype(narrow).name}'s: the graph stores values in {np.dtype(narrow).name}"
        )
    shapes = [[list(v.shape) for v in feeds.values()] for feeds, _ in expected]
    steps["numerics"] = {"status": "pass", "shapes": shapes, "rule": rule}
    if record is not None:
        result = replay(record, lambda feeds: session.run(None, dict(feeds)))
        if not result.passed:
            raise FusionError(f"fused model fails its parity record: {result.summary()}")
        steps["parity record"] = "pass"


def probe_record(expected: Expected | None, stored=None) -> ParityRecord | None:
    """The first probe's random inputs and the input graph's outputs for them, held to the
    gate's own tolerance (``_within``; ``stored``'s where the graph keeps values in a narrower
    type): the record ``ln2d fuse`` writes into a model that came without one. None where the
    input did not run, or one probe is past the record's budget."""
    from ln2d.export.record import BUDGET_BYTES

    if not expected:
        return None
    feeds, outputs = expected[0]
    if sum(a.nbytes for a in [*feeds.values(), *outputs]) > BUDGET_BYTES:
        return None
    floating = [o for o in outputs if np.issubdtype(o.dtype, np.floating)]
    atol, rtol = tolerance(stored or (floating[0].dtype if floating else np.float32))
    scale = max([1.0, *(float(np.abs(o[np.isfinite(o)]).max(initial=0.0)) for o in floating)])
    here = machine.describe()
    return ParityRecord(feeds, tuple(outputs), atol * scale, rtol, "the input graph", here, None)


def reference(original: ModelRef) -> Expected | None:
    """Random inputs and the input graph's outputs at the first two probe shapes it runs at;
    None if it does not load."""
    try:
        reference = _session(original)
    except Exception:
        return None
    found = []
    for batch, sizes in PROBES:
        feeds = _random_feeds(reference, batch, sizes)
        try:
            found.append((feeds, reference.run(None, feeds)))
        except Exception:  # the input model does not run at this shape: try the next one
            continue
        if len(found) == 2:
            break
    return found


def _failure(step: str, exc: Exception) -> FusionError:
    text = " ".join(str(exc).split())
    site = re.search(re.escape(SITE_PREFIX) + r"\d+", text)
    where = f"site {site.group(0)}" if site else "outside the fused sites"
    return FusionError(f"fused model failed {step} ({where}): {text[:300]}")


def _session(model: ModelRef, folder: Path | None = None):
    """A CPU session of a file, or of a model in memory whose external data is in ``folder``.
    No arena: what a run allocates goes back when it ends, so the input's session and the
    fused one never hold their activations at the same time (large models)."""
    return open_session(model, SessionSettings(arena=False, data_folder=folder))


def _mismatch(session, expected: Expected, dtype=None) -> dict | None:
    """The feeds of the first probe whose outputs are not ``_within`` the input graph's."""
    for feeds, outputs in expected:
        for want, have in zip(outputs, session.run(None, feeds), strict=True):
            if not _within(have, want, dtype):
                return feeds
    return None


def _within(actual: np.ndarray, expected: np.ndarray, dtype=None) -> bool:
    """The dtype's tolerance (``dtype``'s, where given), absolute part scaled by the output's
    magnitude: random inputs through a deep random network give logits far from 1. Where the
    input graph itself gives NaN or Inf (a network that is not a LayerNorm can, on random
    input), the fused graph must give the same there."""
    if not np.issubdtype(expected.dtype, np.floating):
        return bool(np.array_equal(actual, expected))
    finite = np.isfinite(expected)
    if not np.array_equal(actual[~finite], expected[~finite], equal_nan=True):
        return False
    actual, expected = actual[finite], expected[finite]
    atol, rtol = tolerance(dtype or expected.dtype)
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


def _failure_alone(original, fused, report: FusionReport, feeds) -> str | None:
    """Each fused site run by itself, its inputs the input graph's own values there, against
    the input graph's output of it within that output's dtype's tolerance: what rounding
    upstream cannot blur. The message for the first site that fails, else None."""
    model = _graph(fused)
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    folder = fused.parent if isinstance(fused, Path) else None
    for site in report.fused:
        nodes = [n for n in graph.node if site_of(n.name) == site.name]
        made = {o for n in nodes for o in n.output}
        inputs = sorted({i for n in nodes for i in n.input if i and i not in made | constants})
        try:
            values = dict(feeds)
            wanted = [n for n in [*inputs, site.output] if n not in feeds]  # never empty
            values.update(zip(wanted, _run_with_outputs(original, wanted, feeds), strict=True))
            alone = onnx.utils.Extractor(model).extract_model(inputs, [site.output])
            (have,) = _session(alone, folder).run(None, {n: values[n] for n in inputs})
        except Exception as exc:  # onnx and onnxruntime raise many types
            return f"fused model failed numerics (site {site.name}): cannot run it alone: {exc}"
        if not _within(have, values[site.output]):
            err = float(np.abs(have.astype(np.float64) - values[site.output]).max())
            return (
                f"fused model failed numerics (site {site.name}, form {site.form}): max abs "
                f"error {err:.3g} against the input graph, the site alone"
            )
    return None


def _graph(model: ModelRef) -> onnx.ModelProto:
    """The model itself, or a file's graph without its external data."""
    return onnx.load(str(model), load_external_data=False) if isinstance(model, Path) else model


def _run_with_outputs(model: ModelRef, names: list[str], feeds) -> list[np.ndarray]:
    folder = model.parent if isinstance(model, Path) else None
    probed = onnx.ModelProto()
    if folder is None:
        probed.CopyFrom(model)
    else:
        probed = onnx.load(str(model), load_external_data=False)
    known = {o.name for o in probed.graph.output}
    probed.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(n) for n in names if n not in known
    )
    return _session(probed, folder).run(names, feeds)
