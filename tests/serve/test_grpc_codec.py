"""The gRPC codec in process, on the protocol's own messages: raw and typed contents in, raw
logits or classification strings out, the same bytes as the HTTP codec, and a 400 (gRPC's
INVALID_ARGUMENT) for each malformed request."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from ln2d.serve import grpc_codec, v2_codec
from ln2d.serve.errors import ApiError
from ln2d.serve.model import ModelInfo

INFO = ModelInfo("tiny", ("cat", "dog", "eel"), "input", "logits", 1, 2, 2, (0.0,), (1.0,), 1.0)
SAMPLES = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 1, 2, 2)
LOGITS = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 3.0]], np.float32)


def request(raw: bytes | None = SAMPLES.tobytes(), **changes) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="tiny", id="r1")
    message.inputs.add(name=changes.pop("name", "input"), datatype=changes.pop("datatype", "FP32"),
                       shape=changes.pop("shape", [2, 1, 2, 2]))  # fmt: skip
    if raw is not None:
        message.raw_input_contents.append(raw)
    for value in changes.pop("typed", []):
        message.inputs[0].contents.fp32_contents.append(value)
    if "classification" in changes:
        output = message.outputs.add(name="logits")
        output.parameters["classification"].int64_param = changes.pop("classification")
    assert not changes
    return message


def test_raw_and_typed_contents_give_the_same_samples():
    raw = grpc_codec.parse_request(request(), INFO, max_images=4)
    typed = grpc_codec.parse_request(request(None, typed=SAMPLES.ravel()), INFO, max_images=4)
    np.testing.assert_array_equal(raw.samples, SAMPLES)
    np.testing.assert_array_equal(typed.samples, SAMPLES)
    assert raw.id == "r1" and raw.output.class_count == 0


def test_logits_and_classifications_are_the_http_codecs_bytes():
    for count in (0, 2):
        parsed = grpc_codec.parse_request(request(classification=count), INFO, max_images=4)
        answer = grpc_codec.build_response(parsed, LOGITS, INFO, version=3)
        assert (answer.model_name, answer.model_version, answer.id) == ("tiny", "3", "r1")
        (output,) = answer.outputs
        tensor = {"name": "input", "datatype": "FP32", "shape": [2, 1, 2, 2],
                  "parameters": {"binary_data_size": SAMPLES.nbytes}}  # fmt: skip
        wanted = {"name": "logits", "parameters": {"binary_data": True, "classification": count}}
        header = json.dumps({"inputs": [tensor], "outputs": [wanted]}).encode()
        http = v2_codec.parse_request(header + SAMPLES.tobytes(), str(len(header)), INFO, 4)
        body, headers = v2_codec.build_response(http, LOGITS, INFO, 3)
        length = int(headers[v2_codec.HEADER_LENGTH])
        described = json.loads(body[:length])["outputs"][0]
        assert (output.datatype, list(output.shape)) == (described["datatype"], described["shape"])
        assert answer.raw_output_contents[0] == body[length:]
    (size,) = struct.unpack_from("<I", answer.raw_output_contents[0])
    assert answer.raw_output_contents[0][4 : 4 + size].decode() == "0.900000:1:dog"


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (request(name="pixels"), "unknown input 'pixels'"),
        (request(datatype="FP16"), "datatype must be FP32"),
        (request(shape=[5, 1, 2, 2]), "1 <= N <= 4"),
        (request(raw=SAMPLES.tobytes()[:-1]), "raw_input_contents holds 31 bytes"),
        (request(None, typed=[1.0, 2.0]), "fp32_contents holds 2 values"),
        (request(raw=np.full(8, np.inf, np.float32).tobytes()), "NaN or infinite"),
        (request(typed=[1.0]), "one raw_input_contents entry or as contents"),
        (request(classification=-1), "int64 count >= 0"),
        (service_pb2.ModelInferRequest(model_name="tiny"), "exactly one input"),
    ],
)
def test_malformed_requests_are_400_with_the_reason(message, says):
    with pytest.raises(ApiError, match=says.replace("(", r"\(")) as refused:
        grpc_codec.parse_request(message, INFO, max_images=4)
    assert refused.value.status == 400
