"""The stock ``tritonclient.http`` client, unchanged, against a real ``ln2d serve``: binary
and JSON modes, with and without the classification extension."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import reference_session

pytestmark = pytest.mark.integration

MODEL = "ln2d-layernorm2d"


@pytest.fixture(scope="module")
def server(digits_onnx):
    with ServerProcess(digits_onnx) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(f"{server.host}:{server.port}")


@pytest.fixture(scope="module")
def samples(digits_onnx):
    x = np.random.default_rng(0).standard_normal((3, 1, 16, 16)).astype(np.float32)
    (logits,) = reference_session(digits_onnx).run(None, {"input": x})
    return x, logits


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    server = client.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 16, 16]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["provider"] == "CPUExecutionProvider"


def _infer(client, x, binary: bool, class_count: int = 0, version: str = ""):
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    output = triton.InferRequestedOutput("logits", binary_data=binary, class_count=class_count)
    return client.infer(MODEL, [tensor], outputs=[output], model_version=version)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_logits_equal_onnxruntime(client, samples, binary):
    x, logits = samples
    result = _infer(client, x, binary)
    np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=1e-5, atol=1e-5)
    assert result.get_response()["model_name"] == MODEL


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(client, samples, binary):
    x, logits = samples
    result = _infer(client, x, binary, class_count=3, version="1")
    strings = result.as_numpy("logits")
    assert strings.shape == (3, 3)
    for row, expected in zip(strings, logits, strict=True):
        parsed = [entry.decode().split(":") if binary else entry.split(":") for entry in row]
        indices = [int(index) for _, index, _ in parsed]
        assert indices == list(np.argsort(-expected)[:3])
        assert [label for _, _, label in parsed] == [str(i) for i in indices]
        np.testing.assert_allclose([float(s) for s, _, _ in parsed], expected[indices], atol=1e-5)


def test_default_outputs_and_errors(client, samples):
    x, logits = samples
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_allclose(
        client.infer(MODEL, [tensor]).as_numpy("logits"), logits, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [tensor])
    wrong = triton.InferInput("input", [1, 3, 16, 16], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer(MODEL, [wrong])
