"""The Open Inference Protocol over gRPC: the stock ``tritonclient.grpc`` client (and raw
stubs from the protocol's own messages) against a real ``ln2d serve --grpc-port`` on loopback.
The answers equal the HTTP answers bit for bit; hostile input gets a proper status code, never
UNKNOWN or INTERNAL, and the server answers normally afterwards."""

from __future__ import annotations

import json
import signal
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import reference_session
from tests.images import digit, png
from tests.serve.prometheus import sample

pytestmark = pytest.mark.integration

MODEL = "ln2d-layernorm2d"
X = np.random.default_rng(0).standard_normal((3, 1, 16, 16)).astype(np.float32)
Code = grpc.StatusCode


@pytest.fixture(scope="module")
def server(digits_onnx):
    with ServerProcess(digits_onnx, ["--grpc-port", "0", "--max-body-bytes", "65536"]) as running:
        assert running.grpc_port
        yield running


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(f"{server.host}:{server.grpc_port}")


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"{server.host}:{server.grpc_port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _infer(client, x, class_count: int = 0, version: str = "", name: str = MODEL):
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    output = triton.InferRequestedOutput("logits", class_count=class_count)
    return client.infer(name, [tensor], outputs=[output], model_version=version)


def _http_infer(server, x, class_count: int = 0):
    client = triton_http.InferenceServerClient(f"{server.host}:{server.port}")
    tensor = triton_http.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    output = triton_http.InferRequestedOutput("logits", binary_data=True, class_count=class_count)
    return client.infer(MODEL, [tensor], outputs=[output])


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    # As Triton answers: not ready, not an error, for a version or model it does not know.
    assert not client.is_model_ready(MODEL, "7") and not client.is_model_ready("no-such-model")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "ln2d" and "classification" in server["extensions"]
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["inputs"] == [
        {"name": "input", "datatype": "FP32", "shape": ["-1", "1", "16", "16"]}
    ]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]
    assert meta["versions"] == ["1"]


def test_logits_equal_onnxruntime_and_http_bit_for_bit(server, client, digits_onnx):
    result = _infer(client, X)
    logits = result.as_numpy("logits")
    (expected,) = reference_session(digits_onnx).run(None, {"input": X})
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    assert logits.tobytes() == _http_infer(server, X).as_numpy("logits").tobytes()
    answer = result.get_response(as_json=True)
    assert (answer["model_name"], answer["model_version"]) == (MODEL, "1")


def test_typed_contents_answer_as_raw_ones(client, stub):
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="typed-1")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(X.shape))
    tensor.contents.fp32_contents.extend(X.ravel().tolist())
    response = stub.ModelInfer(request)
    typed = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(3, 10)
    assert response.id == "typed-1"
    assert typed.tobytes() == _infer(client, X).as_numpy("logits").tobytes()


def test_classification_extension_equals_http(server, client):
    strings = _infer(client, X, class_count=3, version="1").as_numpy("logits")
    assert strings.shape == (3, 3)
    assert strings.tolist() == _http_infer(server, X, class_count=3).as_numpy("logits").tolist()
    score, index, label = strings[0][0].decode().split(":")
    assert int(index) == int(np.argmax(_infer(client, X[:1]).as_numpy("logits")))
    assert label == index and float(score) != 0


def test_repository_calls(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert index == [{"name": MODEL, "version": "1", "state": "READY"}]
    with pytest.raises(InferenceServerException, match="not allowed") as refused:
        client.load_model(MODEL)
    assert refused.value.status() == "StatusCode.PERMISSION_DENIED"


def _raw_request(x=X, **changes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=changes.pop("model_name", MODEL))
    shape = changes.pop("shape", list(x.shape))
    request.inputs.add(name=changes.pop("name", "input"),
                       datatype=changes.pop("datatype", "FP32"), shape=shape)  # fmt: skip
    if "raw" in changes:
        request.raw_input_contents.append(changes.pop("raw"))
    else:
        request.raw_input_contents.append(x.astype("<f4").tobytes())
    for output in changes.pop("outputs", []):
        request.outputs.add(name=output)
    assert not changes
    return request


HOSTILE = [
    ("unknown model", _raw_request(model_name="nope"), Code.NOT_FOUND),
    ("unknown version", service_pb2.ModelInferRequest(model_name=MODEL, model_version="7"),
     Code.NOT_FOUND),
    ("no input", service_pb2.ModelInferRequest(model_name=MODEL), Code.INVALID_ARGUMENT),
    ("bad shape", _raw_request(shape=[3, 1, 8, 8]), Code.INVALID_ARGUMENT),
    ("too many images", _raw_request(shape=[65, 1, 16, 16]), Code.INVALID_ARGUMENT),
    ("bad datatype", _raw_request(datatype="INT64"), Code.INVALID_ARGUMENT),
    ("unknown input", _raw_request(name="pixels"), Code.INVALID_ARGUMENT),
    ("unknown output", _raw_request(outputs=["probabilities"]), Code.INVALID_ARGUMENT),
    ("truncated raw contents", _raw_request(raw=X.tobytes()[:-4]), Code.INVALID_ARGUMENT),
    ("NaN", _raw_request(np.full_like(X, np.nan)), Code.INVALID_ARGUMENT),
    ("oversized message", _raw_request(raw=b"\0" * 70_000), Code.RESOURCE_EXHAUSTED),
]  # fmt: skip


@pytest.mark.parametrize(("case", "request_", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_gets_its_status_and_the_server_goes_on(server, stub, case, request_, code):
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request_)
    assert refused.value.code() == code, refused.value.details()
    assert refused.value.details()
    assert stub.ModelInfer(_raw_request()).raw_output_contents  # and it still serves


def test_the_token_is_asked_for_as_metadata(digits_onnx):
    with ServerProcess(digits_onnx, ["--grpc-port", "0"], env={"LN2D_TOKEN": "s3cret"}) as server:
        client = triton.InferenceServerClient(f"{server.host}:{server.grpc_port}")
        assert client.is_server_live()  # health needs no token, as over HTTP
        with pytest.raises(InferenceServerException) as refused:
            _infer(client, X)
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        tensor = triton.InferInput("input", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        headers = {"authorization": "Bearer s3cret"}
        assert client.infer(MODEL, [tensor], headers=headers).as_numpy("logits").shape == (3, 10)


def test_metrics_and_log_lines_count_grpc_calls_like_http_ones(digits_onnx):
    with ServerProcess(digits_onnx, ["--grpc-port", "0"]) as server:
        client = triton.InferenceServerClient(f"{server.host}:{server.grpc_port}")
        _infer(client, X[:1], name=MODEL)
        with pytest.raises(InferenceServerException):
            _infer(client, X[:1], name="nope")
        metrics = httpx.get(f"{server.url}/metrics").text
    path = "/inference.GRPCInferenceService/ModelInfer"
    assert sample(metrics, "ln2d_requests_total", endpoint=path, status="OK", model=MODEL) == 1
    assert sample(metrics, "ln2d_requests_total", endpoint=path, status="NOT_FOUND") == 1
    assert sample(metrics, "ln2d_stage_seconds_count", stage="inference", model=MODEL) >= 1
    lines = [json.loads(json.loads(line)["message"]) for line in server.logs if path in line]
    assert [(e["status"], e["model"]) for e in lines] == [("OK", MODEL), ("NOT_FOUND", "")]


def test_sigterm_drains_grpc_calls_as_it_drains_http_ones(digits_onnx):
    """An HTTP request decoding 64 large PNGs holds a gRPC call in the batch window (up to
    1 s, while admitted images are still being decoded); SIGTERM arrives with both in flight."""
    flags = ["--grpc-port", "0", "--max-images", "64", "--decode-threads", "1",
             "--max-delay-ms", "1000", "--max-queue", "128"]  # fmt: skip
    server = ServerProcess(digits_onnx, flags)
    photo = png(digit(0)[0].repeat(40, axis=0).repeat(40, axis=1))
    files = [("file", (f"{i}.png", photo, "image/png")) for i in range(64)]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(
        grpc.insecure_channel(f"{server.host}:{server.grpc_port}")
    )
    answers: dict[str, object] = {}
    http = threading.Thread(
        target=lambda: answers.update(http=httpx.post(f"{server.url}/v1/classify", files=files))
    )
    http.start()
    wait_for(server, "ln2d_queue_depth", 64)  # the HTTP request's images are admitted
    call = stub.ModelInfer.future(_raw_request(X[:1]))
    wait_for(server, "ln2d_queue_depth", 65)  # and the gRPC call's image is queued
    server.process.send_signal(signal.SIGTERM)
    answers["grpc"] = call.result(timeout=30)
    http.join(30)
    assert server.process.wait(30) == 0
    assert answers["http"].status_code == 200 and answers["grpc"].raw_output_contents
    with pytest.raises(grpc.RpcError) as refused:  # and the port is closed now
        stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
    assert refused.value.code() == Code.UNAVAILABLE


def wait_for(server: ServerProcess, metric: str, value: float) -> None:
    deadline = time.monotonic() + 20
    while sample(httpx.get(f"{server.url}/metrics").text, metric) < value:
        assert time.monotonic() < deadline, f"{metric} never reached {value}"
        time.sleep(0.005)
