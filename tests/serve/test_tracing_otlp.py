"""Traces leaving a real ``ln2d serve`` process over OTLP/HTTP, into a real OTLP receiver on
loopback (HTTP, protobuf ``ExportTraceServiceRequest`` as the protocol defines it): the
client's ``traceparent`` is honoured on HTTP and on gRPC."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ln2d.serve.tools.launcher import ServerProcess

pytestmark = pytest.mark.integration

MODEL = "ln2d-layernorm2d"
HTTP_TRACE = "0af7651916cd43dd8448eb211c80319c"
GRPC_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: every span of every export, with its resource."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict, object]] = []
        super().__init__(("127.0.0.1", 0), _Export)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _Export(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.server.spans += [(resource, span) for span in scope_spans.spans]
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield server
    server.shutdown()
    thread.join()


def test_spans_of_http_and_grpc_requests_reach_the_receiver(digits_onnx, receiver):
    flags = ["--grpc-port", "0", "--otlp-endpoint", receiver.url]
    x = np.zeros((1, 1, 16, 16), np.float32)
    with ServerProcess(digits_onnx, flags, env={"OTEL_SERVICE_NAME": "digits-test"}) as server:
        tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 16, 16],
                  "data": x.ravel().tolist()}  # fmt: skip
        traceparent = {"traceparent": f"00-{HTTP_TRACE}-b7ad6b7169203331-01"}
        url = f"{server.url}/v2/models/{MODEL}/infer"
        answer = httpx.post(url, json={"inputs": [tensor]}, headers=traceparent)
        assert answer.status_code == 200
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
        request.raw_input_contents.append(x.tobytes())
        with grpc.insecure_channel(f"{server.host}:{server.grpc_port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            metadata = [("traceparent", f"00-{GRPC_TRACE}-00f067aa0ba902b7-01")]
            assert stub.ModelInfer(request, metadata=metadata).raw_output_contents
    # SIGTERM flushed the exporter before the server exited (ServerProcess.__exit__).
    assert server.process.returncode == 0
    by_trace: dict[str, dict[str, object]] = {}
    for resource, span in receiver.spans:
        assert resource["service.name"] == "digits-test"
        by_trace.setdefault(span.trace_id.hex(), {})[span.name] = span
    for trace, root in ((HTTP_TRACE, "POST /v2/models/{name}/infer"),
                        (GRPC_TRACE, "/inference.GRPCInferenceService/ModelInfer")):  # fmt: skip
        spans = by_trace[trace]
        assert {root, "inference", "encode"} <= set(spans), sorted(spans)
        attributes = {a.key: a.value for a in spans[root].attributes}
        assert attributes["ln2d.model"].string_value == MODEL
        assert spans["inference"].parent_span_id == spans[root].span_id
    batches = [span for _, span in receiver.spans if span.name == "batch"]
    linked = {link.trace_id.hex() for batch in batches for link in batch.links}
    assert {HTTP_TRACE, GRPC_TRACE} <= linked
