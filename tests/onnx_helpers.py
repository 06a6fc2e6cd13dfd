"""Exporting test modules with both torch exporters, and running ONNX models."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ln2d import native

EXPORTERS = [("torchscript", 17), ("torchscript", 18), ("dynamo", 18)]


def export(module: torch.nn.Module, x: torch.Tensor, exporter: str, opset: int, dynamic=True):
    """ONNX of module with input 'x' (dynamic N, H, W unless told otherwise)."""
    module.eval()
    quiet = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            if exporter == "dynamo":
                dim = torch.export.Dim
                shapes = {"x": {0: dim("n"), 2: dim("h"), 3: dim("w")}} if dynamic else None
                program = torch.onnx.export(
                    module,
                    (x,),
                    dynamo=True,
                    opset_version=opset,
                    input_names=["x"],
                    dynamic_shapes=shapes,
                    verbose=False,
                )
                return program.model_proto
            buffer = io.BytesIO()
            axes = {"x": {0: "n", 2: "h", 3: "w"}} if dynamic else None
            torch.onnx.export(
                module,
                (x,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes=axes,
            )
            return onnx.load_from_string(buffer.getvalue())
    finally:
        logging.disable(logging.NOTSET)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = native.session_options()  # as the project's own sessions: native models load
    cpu = ["CPUExecutionProvider"]
    session = ort.InferenceSession(model.SerializeToString(), options, providers=cpu)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


def layernorm_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "LayerNormalization"]
