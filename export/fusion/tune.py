"""``ln2d fuse --tune``: pick each site's form by timing the whole model, as TensorRT picks
tactics.

Sites that sit in the same kind of context (same original form, producer op, channel count and
whether a Conv can centre them) are tuned together, so that each trial changes enough of the
model to measure. For each group, in graph order, every form that can lower it, its original
form always among them, is timed inside the whole model with the other groups at their best so
far; a form replaces the current one only when it is faster by more than ``MARGIN`` over all
shapes and slower at none. At the end the tuned model is timed against the input model itself,
beside an A/A control, and the input comes back unchanged unless the tuned model beat it by
the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from ln2d.export import metadata, timing
from ln2d.export.fusion import Matched, lower
from ln2d.export.fusion.forms import forms_for
from ln2d.export.fusion.report import FusionReport, Site
from ln2d.export.numerics import numpy_type
from ln2d.runtime import SessionSettings, open_session

MARGIN = 0.01  # a form must be this much faster (geomean over shapes) to replace another


@dataclass(frozen=True)
class TuneOptions:
    shapes: tuple[tuple[int, ...], ...]  # input shapes to time, all weigh the same
    threads: int
    seconds: float = 0.2  # per variant and shape, per trial
    progress: bool = True


def tune(matched: Matched, options: TuneOptions) -> tuple[onnx.ModelProto, FusionReport]:
    """The fastest assignment of forms found, or the input model when nothing beat it."""
    sites = matched.report.fused
    best = {site.name: site.original for site in sites}
    timings: dict[str, dict[str, float]] = {}
    groups = list(_groups(sites))
    bar = tqdm(total=len(groups) + 1, desc="tune", disable=not options.progress)
    for key, members in groups:
        bar.set_postfix_str(key)
        trial = {
            form: {**best, **{s.name: form for s in members}} for form in forms_for(members[0])
        }
        models = {form: lower(matched, assignment)[0] for form, assignment in trial.items()}
        ms = _time(models, options, matched.folder)
        current = best[members[0].name]
        better = [form for form in ms if _beats(ms[form], ms[current])]
        chosen = min(better, key=lambda form: _geomean(ms[form]), default=current)
        for site in members:
            best[site.name] = chosen
            timings[site.name] = {form: _geomean(times) for form, times in ms.items()}
        bar.update()
    fused, report = lower(matched, best)
    control = "input" + timing.AA_SUFFIX
    final = _time(
        {"tuned": fused, "input": matched.source, control: matched.source}, options, matched.folder
    )
    bar.update()
    bar.close()
    return _verdict(matched, fused, report, final, timings, options)


def default_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """Batch 1 at the model's own input size: static dims, else the size an ln2d export
    records in its metadata, else 224."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    recorded = metadata.read(model).input
    sizes = {2: recorded.height, 3: recorded.width} if recorded else {}
    return tuple(
        d.dim_value if d.HasField("dim_value") else 1 if axis == 0 else sizes.get(axis, 224)
        for axis, d in enumerate(dims)
    )


def _groups(sites: list[Site]) -> Iterator[tuple[str, list[Site]]]:
    groups: dict[str, list[Site]] = {}
    for site in sites:
        key = f"{site.original} after {site.producer}, C={site.channels}"
        key += ", centrable" if site.centrable else ""
        groups.setdefault(key, []).append(site)
    yield from groups.items()


def _time(
    models: dict[str, onnx.ModelProto], options: TuneOptions, folder: Path | None
) -> dict[str, list[float]]:
    """Each model's median ms at each shape, all models side by side; their external data, if
    any, is in ``folder``."""
    sessions = {
        name: open_session(m, SessionSettings(threads=options.threads, data_folder=folder))
        for name, m in models.items()
    }
    medians: dict[str, list[float]] = {name: [] for name in models}
    for shape in options.shapes:
        feeds = _feeds(next(iter(sessions.values())), shape)
        runners = {name: timing.runner(s, feeds) for name, s in sessions.items()}
        for name, ms in timing.interleaved(runners, options.seconds).items():
            medians[name].append(ms)
    return medians


def _geomean(times: list[float]) -> float:
    return math.exp(sum(map(math.log, times)) / len(times))


def _beats(new: list[float], old: list[float]) -> bool:
    """More than MARGIN faster over all shapes, and slower at none of them."""
    slower = any(n > o for n, o in zip(new, old, strict=True))
    return not slower and _geomean(new) < (1 - MARGIN) * _geomean(old)


def _feeds(model_session, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    (value,) = model_session.get_inputs()
    dtype = numpy_type(value.type)
    return {value.name: np.random.default_rng(0).standard_normal(shape).astype(dtype)}


def _verdict(matched, fused, report, final, timings, options):
    """Keep the tuned model only if it beat the input model itself."""
    kept = not _beats(final["tuned"], final["input"])
    report.tuning = {
        "shapes": [list(s) for s in options.shapes],
        "threads": options.threads,
        "median_ms": final,  # per shape, in the order of "shapes"
        "tuned_over_input": _geomean(final["tuned"]) / _geomean(final["input"]),
        "aa_ratio": _geomean(final["input"]) / _geomean(final["input" + timing.AA_SUFFIX]),
        "result": "input kept" if kept else "tuned",
    }
    for site in report.fused:
        site.timings_ms = timings[site.name]
        if kept:
            site.form = site.original
            site.why = "tune: kept as it came; no assignment of forms beat the input model"
        else:
            site.why = f"tune: fastest of {len(timings[site.name])} forms in the whole model"
    if kept:
        report.ops_after = report.ops_before
        return matched.source, report
    return fused, report
