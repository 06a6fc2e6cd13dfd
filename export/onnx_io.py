"""Reading and writing ONNX files with one readable error for anything malformed."""

from __future__ import annotations

import os
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


def raise_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model converted up to ``opset`` by onnx's version converter (never down)."""
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < current:
        raise UserError(f"--opset {opset} is below the model's {current}: it can only be raised")
    if opset == current:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"cannot raise opset {current} -> {opset}: {first}") from exc
    return converted


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write atomically: a file of that name is either the old one or the whole new one."""
    path = Path(path)
    with writing(path):
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            onnx.save(model, str(partial))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
