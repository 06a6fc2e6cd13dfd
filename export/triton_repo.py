"""Write a Triton Inference Server model repository for an exported model.

Layout (what Triton's ONNX Runtime backend loads unchanged)::

    DIR/<name>/config.pbtxt
    DIR/<name>/labels.txt
    DIR/<name>/<version>/model.onnx

The config is built as plain data and rendered to protobuf text format, so that writing it
needs no Triton package; the tests parse it with tritonclient's ``ModelConfig`` protobuf.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ln2d import pbtxt
from ln2d.constants import Batching
from ln2d.errors import UserError, writing
from ln2d.export import metadata
from ln2d.export.onnx_io import load_model, save_model
from ln2d.metadata import ModelMetadata
from ln2d.repository import CONFIG_FILE, LABELS_FILE, MODEL_FILE, MODEL_NAME

# ONNX element type -> Triton data type (the ones an image classifier can have at its edges).
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.BFLOAT16: "TYPE_BF16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
}


def write_repository(
    model_path: Path, repo: Path, name: str | None, batching: Batching, version: int = 1
) -> Path:
    """Write ``repo/<name>/`` with ``model_path`` as ``version`` and return that directory.
    Other versions already there stay; the config and labels are the new version's."""
    model = load_model(model_path)
    props = metadata.read(model)
    name = name or props.name or model_path.stem
    if not MODEL_NAME.fullmatch(name):
        raise UserError(f"model name {name!r}: use letters, digits, '_', '-' and '.' only")
    config = model_config(model, name, batching)
    labels = _labels(props, _num_classes(config))

    target = repo / name
    save_model(model, target / str(version) / MODEL_FILE)
    with writing(target / LABELS_FILE) as path:
        path.write_text("".join(f"{label}\n" for label in labels))
    with writing(target / CONFIG_FILE) as path:
        path.write_text(pbtxt.render(config))
    return target


def model_config(model: onnx.ModelProto, name: str, batching: Batching) -> dict:
    """The ``ModelConfig`` as nested dicts: dims come from the graph, fixed sizes from metadata."""
    (graph_input,) = _real_inputs(model.graph)
    (graph_output,) = model.graph.output
    input_dims = _dims(graph_input)
    batched = isinstance(input_dims[0], str)
    if batched:
        input_dims = input_dims[1:]
    trained = _trained_size(model)
    config: dict = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": batching.max_batch if batched else 0,
        "input": [
            {
                "name": graph_input.name,
                "data_type": _triton_type(graph_input),
                # Symbolic H and W become the size the model was trained and served at, so
                # that Triton batches requests of one shape, as ln2d serve does.
                "dims": [_fixed(d, trained.get(i)) for i, d in enumerate(input_dims)],
            }
        ],
        "output": [
            {
                "name": graph_output.name,
                "data_type": _triton_type(graph_output),
                "dims": [_fixed(d) for d in _dims(graph_output)[1 if batched else 0 :]],
                "label_filename": LABELS_FILE,
            }
        ],
    }
    if batched:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(batching.max_delay_ms * 1000),
            "default_queue_policy": {
                "max_queue_size": batching.max_queue,
                "timeout_action": "REJECT",
                "default_timeout_microseconds": round(batching.timeout_s * 1_000_000),
            },
        }
    return config


def _real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise UserError(
            f"a Triton classifier repository needs one input and one output; the model has "
            f"{len(inputs)} and {len(graph.output)}"
        )
    return inputs


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in _shape(value)]


def _shape(value: onnx.ValueInfoProto):
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        raise UserError(f"{value.name!r} has no static rank; Triton needs one")
    return tensor.shape.dim


def _triton_type(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in TRITON_TYPES:
        raise UserError(f"{value.name!r} has ONNX type {elem}, which this writer does not map")
    return TRITON_TYPES[elem]


def _trained_size(model: onnx.ModelProto) -> dict[int, int]:
    """Per non-batch input axis, the size in ``ln2d.input`` (C, H, W), if the metadata is there."""
    spec = metadata.read(model).input
    return {} if spec is None else {0: spec.channels, 1: spec.height, 2: spec.width}


def _fixed(dim: int | str, size: int | None = None) -> int:
    if isinstance(dim, int):
        return dim
    return size if size is not None else -1


def _num_classes(config: dict) -> int:
    (dims,) = [o["dims"] for o in config["output"]]
    if len(dims) != 1 or dims[0] < 1:
        raise UserError(f"a classifier's output must be (batch, classes); the model's is {dims}")
    return dims[0]


def _labels(props: ModelMetadata, num_classes: int) -> list[str]:
    labels = list(props.labels or [str(i) for i in range(num_classes)])
    if len(labels) != num_classes:
        raise UserError(f"the model has {num_classes} outputs but {len(labels)} labels")
    return labels
