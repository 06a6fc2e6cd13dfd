"""The Open Inference Protocol codec in process: JSON and binary tensors in, logits or
classifications out, and a 400 for each malformed request."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ln2d.serve.errors import ApiError
from ln2d.serve.model import ModelInfo
from ln2d.serve.v2_codec import HEADER_LENGTH, build_response, parse_request

INFO = ModelInfo("tiny", ("cat", "dog", "eel"), "input", "logits", 1, 2, 2, (0.0,), (1.0,), 1.0)


def _tensor(data=None, **fields) -> dict:
    tensor = {"name": "input", "datatype": "FP32", "shape": [2, 1, 2, 2], **fields}
    return tensor if data is None else {**tensor, "data": data}


def test_json_tensor_in_json_logits_out():
    samples = np.arange(8, dtype=np.float32)
    body = json.dumps({"id": "r1", "inputs": [_tensor(samples.tolist())]}).encode()
    request = parse_request(body, None, INFO, max_images=4)
    np.testing.assert_array_equal(request.samples, samples.reshape(2, 1, 2, 2))
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 3.0]], np.float32)
    content, headers = build_response(request, logits, INFO, 1)
    answer = json.loads(content)
    assert headers == {"content-type": "application/json"} and answer["id"] == "r1"
    (output,) = answer["outputs"]
    assert output["shape"] == [2, 3] and output["data"] == pytest.approx(logits.ravel().tolist())


def test_binary_tensor_in_binary_classification_out():
    samples = np.linspace(0, 1, 8, dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [_tensor(parameters={"binary_data_size": samples.nbytes})],
            "outputs": [{"name": "logits", "parameters": {"classification": 2,
                                                         "binary_data": True}}],
        }
    ).encode()  # fmt: skip
    request = parse_request(header + samples.tobytes(), str(len(header)), INFO, max_images=4)
    np.testing.assert_array_equal(request.samples.ravel(), samples)
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 3.0]], np.float32)
    content, headers = build_response(request, logits, INFO, 1)
    length = int(headers[HEADER_LENGTH])
    described = json.loads(content[:length])["outputs"][0]
    assert described["datatype"] == "BYTES" and described["shape"] == [2, 2]
    raw = content[length:]
    assert len(raw) == described["parameters"]["binary_data_size"]
    assert b"dog" in raw and b"eel" in raw  # the top class of each sample, by label


@pytest.mark.parametrize(
    ("request_body", "fragment"),
    [
        ({"inputs": []}, "exactly one input tensor"),
        ({"inputs": [_tensor([0.0] * 7)]}, ""),  # 7 values for a shape of 8
        ({"inputs": [_tensor([0.0] * 8, shape=[9, 1, 2, 2])]}, ""),  # more images than allowed
    ],
)
def test_malformed_requests_are_400(request_body, fragment):
    with pytest.raises(ApiError) as caught:
        parse_request(json.dumps(request_body).encode(), None, INFO, max_images=4)
    assert caught.value.status == 400 and fragment in caught.value.message


def test_unclaimed_binary_bytes_are_400():
    header = json.dumps({"inputs": [_tensor(parameters={"binary_data_size": 32})]}).encode()
    with pytest.raises(ApiError, match="not claimed"):
        parse_request(header + bytes(40), str(len(header)), INFO, max_images=4)
