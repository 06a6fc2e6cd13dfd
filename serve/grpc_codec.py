"""The Open Inference Protocol's gRPC ``ModelInfer`` request and response, with the messages
tritonclient ships (``service_pb2``), checked by the same rules as the HTTP codec
(``v2_codec``): the same input checks, the same classification strings, the same bytes.

Inputs come as ``raw_input_contents`` (what tritonclient sends) or typed ``fp32_contents``;
the output is always ``raw_output_contents``, as Triton answers. Pure functions of messages,
tested without a server.
"""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import service_pb2

from ln2d.serve.errors import ApiError
from ln2d.serve.model import ModelInfo
from ln2d.serve.v2_codec import (
    ENDIAN_FLOAT32,
    InferRequest,
    RequestedOutput,
    check_input,
    output_tensor,
    samples,
)


def parse_request(
    request: service_pb2.ModelInferRequest, info: ModelInfo, max_images: int
) -> InferRequest:
    if len(request.inputs) != 1:
        raise ApiError(400, f"expected exactly one input tensor, {info.input_name!r}")
    (tensor,) = request.inputs
    shape = check_input(tensor.name, tensor.datatype, list(tensor.shape), info, max_images)
    count = int(np.prod(shape))
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1 or tensor.contents.ByteSize():
            raise ApiError(400, "send the input as one raw_input_contents entry or as contents")
        expected = count * ENDIAN_FLOAT32.itemsize
        if len(raw[0]) != expected:
            raise ApiError(
                400,
                f"raw_input_contents holds {len(raw[0])} bytes; shape {shape} of FP32 is "
                f"{expected}",
            )
        values = np.frombuffer(raw[0], ENDIAN_FLOAT32)
    else:
        values = np.asarray(tensor.contents.fp32_contents, np.float32)
        if values.size != count:
            raise ApiError(
                400, f"fp32_contents holds {values.size} values; shape {shape} needs {count}"
            )
    return InferRequest(
        id=request.id or None,
        samples=samples(values, shape),
        output=_requested_output(request.outputs, info),
    )


def build_response(
    parsed: InferRequest, logits: np.ndarray, info: ModelInfo, version: int
) -> service_pb2.ModelInferResponse:
    datatype, shape, raw, _ = output_tensor(logits, info, parsed.output.class_count)
    response = service_pb2.ModelInferResponse(
        model_name=info.name, model_version=str(version), id=parsed.id or ""
    )
    response.outputs.add(name=info.output_name, datatype=datatype, shape=shape)
    response.raw_output_contents.append(raw)
    return response


def _requested_output(outputs, info: ModelInfo) -> RequestedOutput:
    if not outputs:
        return RequestedOutput(binary=True, class_count=0)
    if len(outputs) != 1 or outputs[0].name != info.output_name:
        names = [o.name for o in outputs]
        raise ApiError(400, f"outputs must list the one output, {info.output_name!r}: got {names}")
    parameter = outputs[0].parameters.get("classification")
    class_count = 0
    if parameter is not None:
        if parameter.WhichOneof("parameter_choice") != "int64_param" or parameter.int64_param < 0:
            raise ApiError(400, "classification must be an int64 count >= 0")
        class_count = min(parameter.int64_param, info.num_classes)
    return RequestedOutput(binary=True, class_count=class_count)
