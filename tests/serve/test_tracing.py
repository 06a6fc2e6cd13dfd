"""Traces in process, recorded by OpenTelemetry's in-memory exporter: the span tree of a
request (continuing the client's ``traceparent``), and a batch span linked to every request
that shared the model run."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from PIL import Image

from ln2d.serve.app import create_app
from ln2d.serve.batcher import Batcher
from ln2d.serve.metrics import Metrics
from ln2d.serve.settings import Settings
from ln2d.serve.tracing import Tracer
from tests.tiny_models import classifier

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def recorded():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracer(provider), exporter


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(classifier(), str(path))
    return path


def _client(model_path, tracer) -> TestClient:
    settings = Settings(model_path=model_path, max_batch=4)
    return TestClient(create_app(settings, tracer=tracer))


def _ready(http: TestClient) -> None:
    deadline = time.monotonic() + 30
    while http.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_request_is_one_trace_continuing_the_clients(model_path, recorded, caplog):
    tracer, exporter = recorded
    with _client(model_path, tracer) as http, caplog.at_level(logging.INFO, "ln2d.access"):
        _ready(http)
        exporter.clear()
        headers = {"content-type": "image/png", "traceparent": TRACEPARENT}
        answer = http.post("/v1/classify", content=_png(), headers=headers)
        assert answer.status_code == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    request = spans["POST /v1/classify"]
    assert request.kind == SpanKind.SERVER
    assert format(request.context.trace_id, "032x") == TRACE  # the client's trace goes on
    assert format(request.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert request.attributes["ln2d.model"] == "tiny" and request.attributes["ln2d.version"] == "1"
    assert request.attributes["http.response.status_code"] == 200
    for stage in ("decode", "inference", "encode"):  # alone on the server: no queue wait
        assert spans[stage].parent.span_id == request.context.span_id, stage
        assert request.start_time <= spans[stage].start_time <= spans[stage].end_time
        assert spans[stage].end_time <= request.end_time
    assert spans["decode"].end_time <= spans["inference"].start_time
    inference = spans["inference"].attributes
    assert (
        inference["ln2d.batch_size"] == 1 and inference["ln2d.provider"] == "CPUExecutionProvider"
    )
    (link,) = spans["batch"].links
    assert link.context.span_id == request.context.span_id
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ln2d.access"]
    (classified,) = [line for line in lines if line["path"] == "/v1/classify"]
    assert classified["trace_id"] == TRACE
    probes = [line for line in lines if line["path"] == "/v2/health/ready"]
    assert probes and not any("trace_id" in line for line in probes)  # probes are not traced


def test_v2_infer_and_a_bad_request_are_traced_too(model_path, recorded):
    tracer, exporter = recorded
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.5] * 64}
    with _client(model_path, tracer) as http:
        _ready(http)
        exporter.clear()
        assert http.post("/v2/models/tiny/infer", json={"inputs": [tensor]}).status_code == 200
        assert http.post("/v2/models/tiny/infer", json={"inputs": []}).status_code == 400
    names = [span.name for span in exporter.get_finished_spans()]
    assert names.count("POST /v2/models/{name}/infer") == 2
    assert {"inference", "encode", "batch"} <= set(names) and "decode" not in names
    bad = [
        s
        for s in exporter.get_finished_spans()
        if s.attributes.get("http.response.status_code") == 400
    ]
    assert bad and bad[0].status.is_ok  # bad input is not a server error


def test_a_batch_span_links_every_request_it_served(recorded):
    tracer, exporter = recorded
    session = ort.InferenceSession(
        classifier().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    run = lambda batch: session.run(None, {"input": batch})[0]  # noqa: E731
    metrics = Metrics().for_model("tiny", 1)
    attributes = {"ln2d.model": "tiny", "ln2d.version": "1", "ln2d.provider": "cpu"}
    parents = [tracer.request(f"request {i}", {}, {}) for i in range(2)]
    x = np.zeros((1, 1, 8, 8), np.float32)

    async def main():
        batcher = Batcher(run, 4, 1.0, 8, metrics, tracer, attributes)
        batcher.start()
        try:
            # Both admitted before either is submitted: the batcher waits for the second.
            with batcher.admit(1) as first, batcher.admit(1) as second:
                deadline = time.monotonic() + 10
                return await asyncio.gather(
                    batcher.infer(first, x, deadline, parents[0]),
                    batcher.infer(second, x, deadline, parents[1]),
                )
        finally:
            await batcher.stop()

    asyncio.run(main())
    for parent in parents:
        parent.end()
    spans = exporter.get_finished_spans()
    (batch,) = [s for s in spans if s.name == "batch"]
    assert {link.context.span_id for link in batch.links} == {
        p.get_span_context().span_id for p in parents
    }
    assert batch.attributes["ln2d.batch_size"] == 2 and batch.attributes["ln2d.model"] == "tiny"
    for parent in parents:
        children = {
            s.name
            for s in spans
            if s.parent and s.parent.span_id == parent.get_span_context().span_id
        }
        assert children == {"queue", "inference"}
