"""Reading and writing ONNX files with one readable error for anything malformed."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ln2d.errors import UserError, writing

MIN_FUSE_OPSET = 13  # ReduceSum with axes as input, and what the canonical rules assume


def load_model(path: Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable ONNX model ({exc})") from exc
    if not model.graph.node:
        raise UserError(f"{path} is not an ONNX model (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path} is not a valid ONNX model: {first}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_FUSE_OPSET:
        raise UserError(f"{path} uses opset {opset}; ln2d fuse supports {MIN_FUSE_OPSET} and newer")
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    with writing(Path(path)) as target:
        onnx.save(model, str(target))
