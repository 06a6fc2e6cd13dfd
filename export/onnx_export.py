"""Checkpoint -> ONNX: dynamic batch, height and width, fused LayerNorm2d, serving metadata.

The exporter is torch's dynamo-based one (``torch.onnx.export(dynamo=True)``), the one PyTorch
maintains; TorchScript export is deprecated. The fuser handles graphs from both (see tests).
"""

from __future__ import annotations

import contextlib
import io
import logging

import onnx
import torch

from ln2d import __version__
from ln2d.checkpoint import Checkpoint
from ln2d.errors import UserError
from ln2d.export import metadata
from ln2d.export.fusion import FusionReport, fuse_model
from ln2d.export.fusion.targets import DEFAULT_TARGET

INPUT_NAME = "input"  # float32 (N, C, H, W), normalised as the "ln2d.input" metadata says
OUTPUT_NAME = "logits"  # float32 (N, num_classes), before softmax
DEFAULT_OPSET = 23  # newest opset ONNX Runtime 1.32 (CPU) and 1.31 (GPU) run; >= 17 needed
MIN_OPSET = 18  # the dynamo exporter emits ReduceMean with axes as input (opset 18)


def export_checkpoint(
    checkpoint: Checkpoint,
    opset: int = DEFAULT_OPSET,
    fuse: bool = True,
    target: str = DEFAULT_TARGET,
) -> tuple[onnx.ModelProto, FusionReport | None]:
    """The ONNX model of ``checkpoint``, fused for ``target`` unless ``fuse`` is false, with
    metadata."""
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is not supported: use {MIN_OPSET} or newer")
    pre = checkpoint.preprocessing
    example = torch.zeros(2, pre.channels, pre.height, pre.width)
    proto = module_to_onnx(checkpoint.model(), example, opset, checkpoint.config.min_input_size)
    report = None
    if fuse:
        proto, report = fuse_model(proto, target)
    onnx.checker.check_model(proto, full_check=True)
    metadata.write(
        proto,
        {
            "name": "ln2d-" + checkpoint.config.norm,
            "labels": list(checkpoint.labels),
            "input": {
                **pre.to_dict(),
                "layout": "NCHW",
                "color": "L" if pre.channels == 1 else "RGB",
                "scale": 1 / 255,
            },
            "architecture": checkpoint.config.to_dict(),
            "eps": repr(checkpoint.config.eps),
            "version": __version__,
            "checkpoint_sha256": checkpoint.sha256,
            "fusion": report.metadata(target) if report is not None else {"fused": False},
        },
    )
    proto.doc_string = f"SimpleLN_CNN exported by ln2d {__version__}"
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
    # The exporter prints progress and warnings to stdout / logging: keep the CLI output clean.
    quiet = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
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
    finally:
        logging.disable(logging.NOTSET)
    return program.model_proto
