"""A PyTorch module -> ONNX: dynamic batch, height and width, fused LayerNorm2d, checked by the
gate, with the serving metadata ``ln2d serve`` reads.

The exporter is torch's dynamo-based one (``torch.onnx.export(dynamo=True)``), the one PyTorch
maintains. Where it fails (transformers' ConvNextLayerNorm with a dynamic H and W, for one),
TorchScript's exporter takes over and the report says so. The fuser handles both graphs.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch

from ln2d import __version__
from ln2d.checkpoint import Checkpoint
from ln2d.constants import DEFAULT_TARGET
from ln2d.errors import UserError
from ln2d.export import metadata, record
from ln2d.export.fusion import FusionReport, fuse_model
from ln2d.export.numerics import stored_precision, tolerance
from ln2d.export.onnx_io import save_model
from ln2d.metadata import InputSpec, ModelMetadata

INPUT_NAME = "input"  # float32 (N, C, H, W), normalised as the "ln2d.input" metadata says
OUTPUT_NAME = "logits"  # float32 (N, num_classes) before softmax, or any tensor a network gives
DEFAULT_OPSET = 23  # newest opset ONNX Runtime 1.32 (CPU) and 1.31 (GPU) run; >= 17 needed
# ONNX Runtime 1.31's CUDA provider has no kernel for MaxPool-22: at opset 22 and 23 a pool ran
# on the CPU, with copies to and from the GPU around it (scripts/crosscheck_cuda.py on an H100).
# At 21 every node of the bench networks ran on the GPU.
TARGET_OPSETS = {"cuda": 21}
MIN_OPSET = 18  # the dynamo exporter emits ReduceMean with axes as input (opset 18)
TORCHSCRIPT_OPSET = 18  # what the fallback writes when the dynamo exporter fails


PRECISIONS = ("fp32", "fp16")


def _check_precision(precision: str, fuse: bool) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: choose fp32 or fp16")
    if precision == "fp16" and not fuse:
        raise UserError("fp16 needs fusion, which keeps the norms' statistics in fp32")


def _in_precision(proto: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    """The model itself for fp32; for fp16 converted, the norms' statistics kept in fp32."""
    if precision == "fp32":
        return proto
    from ln2d.export.fp16 import to_fp16

    try:
        return to_fp16(proto)
    except Exception as exc:  # the converter and the checker raise many types
        raise UserError(f"fp16 conversion failed: {' '.join(str(exc).split())}") from None


def _recorded(
    proto: onnx.ModelProto, model: torch.nn.Module, spec: InputSpec, precision: str
) -> onnx.ModelProto:
    """``proto`` with its parity record: sample images, PyTorch's outputs for them, and the
    tolerance ``ln2d parity`` holds the precision to (fp16's where the network itself stores
    values in fp16 on the way), met here first (CheckFailed if not)."""
    x = record.sample_images(spec)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).float().numpy()
    keep = record.within_budget(x, [expected])
    half = precision == "fp16" or stored_precision(proto) is not None
    atol, rtol = tolerance(np.float16 if half else np.float32)
    inputs = {INPUT_NAME: x[:keep]}
    record.attach(proto, record.checked(proto, inputs, [expected[:keep]], "PyTorch", atol, rtol))
    return proto


def default_opset(target: str) -> int:
    """The opset ``ln2d export --target TARGET`` writes when not told."""
    return TARGET_OPSETS.get(target, DEFAULT_OPSET)


def export_module(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    preprocessing: dict | None = None,
    name: str | None = None,
    target: str = DEFAULT_TARGET,
    opset: int | None = None,
    fuse: bool = True,
    precision: str = "fp32",
    min_size: int = 2,
) -> FusionReport | None:
    """Export ``model`` (NCHW in, one tensor out) to ``path``: fused for ``target`` and through
    the gate, with serving metadata, in ``precision`` (fp32, or fp16 with the norms' statistics
    in fp32). ``opset`` defaults to the target's (``default_opset``). ``preprocessing`` holds
    ``mean`` and ``std`` per channel (default 0 and 1); ``labels`` default to the class indices
    when the output is (N, classes). Returns the fusion report (None with ``fuse=False``)."""
    _check_precision(precision, fuse)
    model = model.eval()
    opset = opset or default_opset(target)
    channels, height, width = example_input.shape[1:]
    pre = {"mean": (0.0,) * channels, "std": (1.0,) * channels, **(preprocessing or {})}
    if len(pre["mean"]) != channels or len(pre["std"]) != channels:
        raise UserError(f"mean and std need {channels} values, one per input channel")
    spec = InputSpec(channels, height, width, tuple(pre["mean"]), tuple(pre["std"]))
    proto, report = to_onnx(model, example_input, opset, fuse, target, min_size)
    if labels is None and len(proto.graph.output[0].type.tensor_type.shape.dim) == 2:
        with torch.inference_mode():
            classes = model(example_input[:1]).shape[1]
        labels = [str(i) for i in range(classes)]
    values = replace(
        _serving_metadata(spec, report, target),
        name=name or type(model).__name__.lower(),
        architecture=_class_of(model),
        labels=None if labels is None else tuple(labels),
    )
    metadata.write(proto, values)
    save_model(_recorded(_in_precision(proto, precision), model, spec, precision), Path(path))
    return report


def export_checkpoint(
    checkpoint: Checkpoint,
    opset: int | None = None,
    fuse: bool = True,
    target: str = DEFAULT_TARGET,
    precision: str = "fp32",
) -> tuple[onnx.ModelProto, FusionReport | None]:
    """The ONNX model of a SimpleLN_CNN ``checkpoint``, fused for ``target`` unless ``fuse`` is
    false, with metadata, in ``precision``; ``opset`` defaults to the target's."""
    _check_precision(precision, fuse)
    opset = opset or default_opset(target)
    pre = checkpoint.preprocessing
    example = torch.zeros(2, pre.channels, pre.height, pre.width)
    model = checkpoint.model()
    proto, report = to_onnx(model, example, opset, fuse, target, checkpoint.config.min_input_size)
    spec = InputSpec(pre.channels, pre.height, pre.width, pre.mean, pre.std)
    values = replace(
        _serving_metadata(spec, report, target),
        name="ln2d-" + checkpoint.config.norm,
        labels=tuple(checkpoint.labels),
        architecture=checkpoint.config.to_dict(),
        eps=repr(checkpoint.config.eps),
        checkpoint_sha256=checkpoint.sha256,
    )
    metadata.write(proto, values)
    proto.doc_string = f"SimpleLN_CNN exported by ln2d {__version__}"
    return _recorded(_in_precision(proto, precision), model, spec, precision), report


def to_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    opset: int,
    fuse: bool,
    target: str,
    min_size: int = 2,
) -> tuple[onnx.ModelProto, FusionReport | None]:
    """Export (dynamo, else TorchScript), then fuse for ``target`` through the gate."""
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is not supported: use {MIN_OPSET} or newer")
    note = None
    try:
        proto = module_to_onnx(model, example, opset, min_size)
    except UserError as dynamo_failure:
        proto = _torchscript(model, example)
        note = (
            f"exported by TorchScript at opset {TORCHSCRIPT_OPSET}: the dynamo exporter "
            f"failed ({dynamo_failure})"
        )
    if not fuse:
        onnx.checker.check_model(proto, full_check=True)
        return proto, None
    proto, report = fuse_model(proto, target)
    if note:
        report.notes.append(note)
    return proto, report


def module_to_onnx(
    module: torch.nn.Module, example: torch.Tensor, opset: int, min_size: int = 2
) -> onnx.ModelProto:
    """``module`` (NCHW in, one tensor out) as ONNX with dynamic batch, height and width
    (each at least ``min_size``), decomposed: no fusion, no metadata."""
    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=min_size),
        3: torch.export.Dim("width", min=min_size),
    }
    try:
        with _quiet():
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                verbose=False,
            )
    except Exception as exc:
        raise UserError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from exc
    return program.model_proto


def _torchscript(module: torch.nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch"}}
    try:
        with _quiet():
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=TORCHSCRIPT_OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
            )
    except Exception as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"both torch exporters failed; TorchScript: {first}") from exc
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings to stdout / logging: keep the CLI clean."""
    quiet = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            yield
    finally:
        logging.disable(logging.NOTSET)


def _serving_metadata(spec: InputSpec, report: FusionReport | None, target: str) -> ModelMetadata:
    unfused = ModelMetadata(fusion={"fused": False})
    fusion = report.entries(target) if report is not None else unfused
    return replace(fusion, input=spec, version=__version__)


def _class_of(model: torch.nn.Module) -> dict:
    return {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
