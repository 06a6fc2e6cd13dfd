"""``ln2d fuse`` on files of any size: open the model without its weights, match, lower (or
tune), write the result a tensor at a time, and put it in place only once the gate passed on
the written file.

The output keeps its weights in a data file beside it (``OUT.onnx.data``) when asked, when the
input had one, or when they are past protobuf's 2 GB; else it is one inline file.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from ln2d import machine
from ln2d.constants import DEFAULT_TARGET
from ln2d.errors import UserError
from ln2d.export import metadata, onnx_io
from ln2d.export.fusion import FusionReport, Matched, lower, match, verify
from ln2d.export.fusion.verify import probe_record, reference
from ln2d.export.numerics import stored_precision
from ln2d.metadata import ModelMetadata

INLINE_LIMIT = onnx_io.PROTOBUF_LIMIT - (64 << 20)  # room for the graph beside the weights


@dataclass(frozen=True)
class FuseFileOptions:
    target: str = DEFAULT_TARGET
    opset: int | None = None  # raise the model to this opset first
    tune: bool = False  # time the forms instead of following the target's rules
    shapes: tuple[tuple[int, ...], ...] = ()  # tune at these; default: batch 1 at its own size
    threads: int = 0  # tune with this many threads; 0: the CPU quota
    external_data: bool = False  # the weights beside the output, whatever the input did
    progress: bool = True


@dataclass(frozen=True)
class Fused:
    report: FusionReport
    external: bool  # the weights went to OUT.onnx.data


def fuse_file(source: Path, output: Path, options: FuseFileOptions = FuseFileOptions()) -> Fused:
    """Fuse ``source`` into ``output``; FusionError (and nothing written) if the gate fails."""
    if options.shapes and not options.tune:
        raise UserError("--shape only applies with --tune")
    with onnx_io.opened(source, options.progress) as opened:
        stage = _stages(
            options.progress and onnx_io.tensor_bytes(opened.proto) > onnx_io.SPILL_BYTES
        )
        stage("matching")
        model = onnx_io.raise_opset(opened.proto, options.opset) if options.opset else opened.proto
        matched = match(model, opened.folder)
        fused, report = _tuned(matched, options) if options.tune else lower(matched, options.target)
        if report.fused:
            metadata.write(fused, report.entries("tune" if options.tune else options.target))
        stage("running the input model at the probe shapes")
        expected = reference(opened.path)  # before the write: one model in memory at a time
        record = _record(opened.proto, expected)
        if record is not None:
            metadata.write(fused, ModelMetadata(parity_record=record))
        external = options.external_data or opened.external
        if not external and onnx_io.tensor_bytes(fused) > INLINE_LIMIT:
            report.notes.append(
                "the weights are over 2 GB: written to a data file beside the model"
            )
            external = True
        with onnx_io.staged(output) as written:
            onnx_io.write(fused, written, opened.folder, external, options.progress)
            del fused  # weights written inline were loaded for it: the gate reads the file
            stage("checking: onnx.checker, ONNX Runtime, the input's numbers")
            verify(opened.path, written, report, expected, record)  # against the file as it came
    return Fused(report, external)


def _record(source, expected):
    """The parity record the fused model carries: the input's own, checked again by the gate
    here, or one the gate's first probe makes (None where the input does not run here)."""
    carried = metadata.read(source).parity_record
    if carried is None:
        return probe_record(expected, stored_precision(source))
    return dataclasses.replace(carried, recorded_on=machine.describe(), ratio=None)


def _tuned(matched: Matched, options: FuseFileOptions):
    from ln2d.cpu_quota import available_cpus
    from ln2d.export.fusion.tune import TuneOptions, default_shape, tune

    shapes = options.shapes or (default_shape(matched.source),)
    if any(len(s) != len(shapes[0]) or min(s) < 1 for s in shapes):
        raise UserError("--shape takes positive sizes, N,C,H,W, the same rank every time")
    if not matched.report.fused:
        return matched.source, matched.report
    threads = options.threads or available_cpus()
    return tune(matched, TuneOptions(shapes, threads, progress=options.progress))


def _stages(show: bool):
    """Name each long step on stderr, for models large enough to make them long."""

    def stage(name: str) -> None:
        if show:
            print(f"fuse: {name} ...", file=sys.stderr, flush=True)

    return stage
