"""The Open Inference Protocol (KServe v2) infer request and response, with two extensions.

- Binary tensor data: the body is a JSON header of ``Inference-Header-Content-Length`` bytes,
  then the raw tensors in input order (``parameters.binary_data_size`` each); outputs are
  returned the same way when asked (``binary_data`` per output, ``binary_data_output`` per
  request).
- Classification: ``outputs[i].parameters.classification = k`` returns, per sample, the top k
  classes as ``"score:index:label"`` strings (BYTES), where score is the output value, as in
  Triton.

Pure functions of bytes, so that they are tested without a server.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from ln2d.serve.errors import ApiError
from ln2d.serve.model import ModelInfo

HEADER_LENGTH = "inference-header-content-length"
DATATYPE = "FP32"
ENDIAN_FLOAT32 = np.dtype("<f4")


@dataclass(frozen=True)
class RequestedOutput:
    binary: bool
    class_count: int  # 0: the raw tensor


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    samples: np.ndarray  # (N, C, H, W) float32
    output: RequestedOutput


def parse_request(
    body: bytes, header_length: str | None, info: ModelInfo, max_images: int
) -> InferRequest:
    header, binary = _split(body, header_length)
    request = _json_object(header)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"expected exactly one input tensor, {info.input_name!r}")
    samples, used = _input_tensor(inputs[0], binary, info, max_images)
    if used != len(binary):
        raise ApiError(400, f"{len(binary) - used} bytes of binary data were not claimed")
    parameters = _dict(request.get("parameters", {}), "parameters")
    binary_default = parameters.get("binary_data_output", False) is True
    request_id = request.get("id")
    return InferRequest(
        id=request_id if isinstance(request_id, str) else None,
        samples=samples,
        output=_requested_output(request.get("outputs"), info, binary_default),
    )


def build_response(
    request: InferRequest, logits: np.ndarray, info: ModelInfo, version: int
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers; ``model_version`` names the version that ran."""
    output = request.output
    datatype, shape, raw, tensor = output_tensor(logits, info, output.class_count)
    described: dict[str, object] = {"name": info.output_name, "datatype": datatype, "shape": shape}
    if output.binary:
        described["parameters"] = {"binary_data_size": len(raw)}
    else:
        described["data"] = tensor.ravel().tolist()
    response: dict[str, object] = {"model_name": info.name, "model_version": str(version)}
    if request.id is not None:
        response["id"] = request.id
    response["outputs"] = [described]
    header = json.dumps(response, separators=(",", ":")).encode()
    if not output.binary:
        return header, {"content-type": "application/json"}
    return header + raw, {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def request_schema(max_images: int, info: ModelInfo | None = None) -> dict:
    """The JSON Schema of an infer request, for the OpenAPI document: to this model, or
    (without ``info``) to any model of a repository. One rule is beyond JSON Schema and only
    stated: ``data`` holds N x C x H x W numbers."""
    sizes = (
        [{"type": "integer", "minimum": 1}] * 3
        if info is None
        else [{"const": size} for size in info.sample_shape]
    )
    shape = {
        "type": "array",
        "prefixItems": [{"type": "integer", "minimum": 1, "maximum": max_images}, *sizes],
        "items": False,
        "minItems": 4,
    }
    tensor = {
        "type": "object",
        "properties": {
            "name": _name(info and info.input_name),
            "datatype": {"const": DATATYPE},
            "shape": shape,
            "data": {
                "type": "array",
                "items": {"type": "number"},
                "description": "N x C x H x W finite numbers, row-major",
            },
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
        },
        "required": ["name", "datatype", "shape"],
    }
    output = {
        "type": "object",
        "properties": {
            "name": _name(info and info.output_name),
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data": {"type": "boolean"},
                    "classification": {"type": "integer", "minimum": 0},
                },
            },
        },
        "required": ["name"],
    }
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
            "outputs": {"type": "array", "items": output, "minItems": 1, "maxItems": 1},
            "parameters": {
                "type": "object",
                "properties": {"binary_data_output": {"type": "boolean"}},
            },
        },
        "required": ["inputs"],
    }


def _name(name: str | None) -> dict:
    return {"type": "string"} if name is None else {"const": name}


RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"enum": [DATATYPE, "BYTES"]},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "data": {"type": "array", "items": {"type": ["number", "string"]}},
                    "parameters": {"type": "object"},
                },
                "required": ["name", "datatype", "shape"],
            },
        },
    },
    "required": ["model_name", "model_version", "outputs"],
}


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise ApiError(
            400,
            f"Inference-Header-Content-Length {header_length!r} is not between 1 and the body "
            f"size, {len(body)}",
        )
    return body[:length], body[length:]


def _json_object(header: bytes) -> dict:
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    return _dict(request, "the request")


def _dict(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    return value


def _input_tensor(
    tensor: dict, binary: bytes, info: ModelInfo, max_images: int
) -> tuple[np.ndarray, int]:
    """The ``(N, C, H, W)`` samples and how many binary bytes they used."""
    shape = check_input(
        tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), info, max_images
    )
    count = int(np.prod(shape))
    size = _dict(tensor.get("parameters", {}), "input parameters").get("binary_data_size")
    if size is not None:
        if size != count * ENDIAN_FLOAT32.itemsize or size > len(binary):
            raise ApiError(
                400,
                f"binary_data_size {size!r} does not match shape {shape} of {DATATYPE} "
                f"({count * ENDIAN_FLOAT32.itemsize} bytes; {len(binary)} bytes sent)",
            )
        values, used = np.frombuffer(binary, ENDIAN_FLOAT32, count), size
    else:
        values, used = _json_data(tensor.get("data"), count), 0
    return samples(values, shape), used


def check_input(
    name: object, datatype: object, shape: object, info: ModelInfo, max_images: int
) -> list[int]:
    """The input's shape, once its name, datatype and shape are the model's (any protocol)."""
    if name != info.input_name:
        raise ApiError(400, f"unknown input {name!r}; the model's input is {info.input_name!r}")
    if datatype != DATATYPE:
        raise ApiError(400, f"input datatype must be {DATATYPE}, got {datatype!r}")
    return _shape(shape, info, max_images)


def samples(values: np.ndarray, shape: list[int]) -> np.ndarray:
    """Checked values as the ``(N, C, H, W)`` float32 samples (any protocol)."""
    if not np.isfinite(values).all():
        raise ApiError(400, "input contains NaN or infinite values")
    return values.reshape(shape).astype(np.float32)


def output_tensor(
    logits: np.ndarray, info: ModelInfo, class_count: int
) -> tuple[str, list[int], bytes, np.ndarray]:
    """The answer's one output (any protocol): datatype, shape, raw bytes, and the tensor
    (the top ``class_count`` classes as ``score:index:label`` strings, or the logits)."""
    if class_count:
        tensor = _classification(logits, info.labels, class_count)
        return "BYTES", list(tensor.shape), _bytes_tensor(tensor), tensor
    tensor = logits.astype(ENDIAN_FLOAT32, copy=False)
    return DATATYPE, list(tensor.shape), tensor.tobytes(), tensor


def _shape(shape: object, info: ModelInfo, max_images: int) -> list[int]:
    expected = list(info.sample_shape)
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(type(d) is int for d in shape)
        or shape[1:] != expected
        or not 1 <= shape[0] <= max_images
    ):
        raise ApiError(
            400,
            f"input shape must be [N, {', '.join(map(str, expected))}] with 1 <= N <= "
            f"{max_images}, got {shape!r}",
        )
    return shape


def _json_data(data: object, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise ApiError(400, "input needs 'data' or parameters.binary_data_size")
    try:
        values = np.asarray(data)
    except ValueError:
        raise ApiError(400, "input data is not a regular array of numbers") from None
    if values.dtype.kind not in "iuf" or values.size != count:
        raise ApiError(
            400, f"input data must be {count} numbers, got {values.size} of kind {values.dtype}"
        )
    return values.astype(np.float32).ravel()


def _requested_output(outputs: object, info: ModelInfo, binary_default: bool) -> RequestedOutput:
    if outputs is None:
        return RequestedOutput(binary_default, 0)
    if not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict):
        raise ApiError(400, f"outputs must list the one output, {info.output_name!r}")
    if outputs[0].get("name") != info.output_name:
        raise ApiError(
            400,
            f"unknown output {outputs[0].get('name')!r}; the model's output is "
            f"{info.output_name!r}",
        )
    parameters = _dict(outputs[0].get("parameters", {}), "output parameters")
    binary = parameters.get("binary_data", binary_default)
    class_count = parameters.get("classification", 0)
    if type(binary) is not bool or type(class_count) is not int or class_count < 0:
        raise ApiError(400, "binary_data must be a boolean and classification a count >= 0")
    return RequestedOutput(binary, min(class_count, info.num_classes))


def _classification(logits: np.ndarray, labels: tuple[str, ...], k: int) -> np.ndarray:
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    rows = [
        [f"{row[i]:f}:{i}:{labels[i]}" for i in indices]
        for row, indices in zip(logits, top, strict=True)
    ]
    return np.array(rows, dtype=object)


def _bytes_tensor(tensor: np.ndarray) -> bytes:
    """BYTES elements as the binary extension lays them out: uint32 LE length + the bytes."""
    parts = []
    for value in tensor.ravel():
        encoded = value.encode()
        parts.append(struct.pack("<I", len(encoded)))
        parts.append(encoded)
    return b"".join(parts)
