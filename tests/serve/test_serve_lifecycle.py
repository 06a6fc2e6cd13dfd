"""The server under load and over its lifetime: batching, backpressure, deadlines, SIGTERM
drain, auth, models without metadata, providers, CLI errors. Every load loop is bounded."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

import httpx
import onnx
import pytest

from ln2d.cpu_quota import cgroup_quota
from ln2d.data import Preprocessing
from ln2d.serve.tools.launcher import ServerProcess
from ln2d.serve.tools.loadgen import http_request, run_load
from tests.helpers import cuda_unavailable, run_cli
from tests.images import digit, png
from tests.serve.prometheus import sample

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD_PNG = png(digit(0)[0])
PNG_HEADERS = {"content-type": "image/png"}


def _metric(url: str, name: str, **labels: str) -> float:
    return sample(httpx.get(f"{url}/metrics").text, name, **labels)


def test_concurrent_requests_are_batched(digits_onnx):
    with ServerProcess(digits_onnx, ["--max-delay-ms", "20", "--max-batch", "16"]) as server:
        request = http_request("POST", "/v1/classify", GOOD_PNG, PNG_HEADERS)
        result = run_load(server.host, server.port, request, concurrency=16, seconds=1.0)
        assert result.status_counts() == {200: len(result.statuses)}
        runs = _metric(server.url, "ln2d_batch_size_count")
        images = _metric(server.url, "ln2d_batch_size_sum")
        assert images > runs, f"{images} images in {runs} runs: nothing was batched"
        assert _metric(server.url, "ln2d_batch_size_bucket", le="1.0") < runs


@pytest.mark.any_target
def test_overload_is_refused_fast_and_the_server_stays_ready(digits_onnx):
    with ServerProcess(digits_onnx, ["--max-queue", "4", "--max-batch", "4"]) as server:
        request = http_request("POST", "/v1/classify", GOOD_PNG, PNG_HEADERS)
        result = run_load(server.host, server.port, request, concurrency=64, seconds=1.5)
        counts = result.status_counts()
        assert set(counts) == {200, 503} and counts[200] > 0 and counts[503] > 0, counts
        assert result.failures == 0
        # A refusal is answered without queueing: much faster than an admitted request.
        assert result.summary(503)["p50_ms"] < result.summary(200)["p50_ms"]
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        too_many = [("file", ("x.png", GOOD_PNG, "image/png"))] * 5  # 5 images > queue of 4
        refused = httpx.post(f"{server.url}/v1/classify", files=too_many)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "busy" in refused.json()["error"]
        # Once the burst is over, the server admits again.
        after = httpx.post(f"{server.url}/v1/classify", content=GOOD_PNG, headers=PNG_HEADERS)
        assert after.status_code == 200 and after.json()["predictions"]


def test_deadline_gives_504(digits_onnx):
    """The body is in long before the deadline (small, on loopback); decoding 64 large images
    on one thread is not, so the answer is 504, not 408."""
    with ServerProcess(digits_onnx, ["--timeout-s", "0.05", "--decode-threads", "1"]) as server:
        response = httpx.post(f"{server.url}/v1/classify", files=_LARGE_PHOTOS)
        assert response.status_code == 504 and "deadline" in response.json()["error"]
        assert 'reason="deadline"' in httpx.get(f"{server.url}/metrics").text


# 64 640x640 PNGs: a small body (the digit compresses well) that is slow to decode.
_LARGE_PHOTO = png(digit(0)[0].repeat(40, axis=0).repeat(40, axis=1))
_LARGE_PHOTOS = [("file", (f"{i}.png", _LARGE_PHOTO, "image/png")) for i in range(64)]


def test_sigterm_drains_in_flight_requests_and_exits_0(digits_onnx):
    server = ServerProcess(digits_onnx, ["--max-images", "64", "--decode-threads", "1"])
    answers: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{server.url}/v1/classify", files=_LARGE_PHOTOS))
    )
    sender.start()
    deadline = time.monotonic() + 10
    while _metric(server.url, "ln2d_in_flight_requests") < 2 and time.monotonic() < deadline:
        time.sleep(0.005)  # the /metrics request itself is one of them
    server.process.send_signal(signal.SIGTERM)
    sender.join(30)
    assert server.process.wait(30) == 0
    assert answers and answers[0].status_code == 200
    assert len(answers[0].json()["predictions"]) == 64
    assert any("Shutting down" in line for line in server.logs)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/health/live")


def test_bearer_token(digits_onnx):
    with ServerProcess(digits_onnx, env={"LN2D_TOKEN": "s3cret"}) as server:
        url = server.url
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200
        for path in ("/v2", "/v2/models/ln2d-layernorm2d", "/v1/model"):
            refused = httpx.get(f"{url}{path}")
            assert refused.status_code == 401 and refused.headers["www-authenticate"]
        wrong = {**PNG_HEADERS, "authorization": "Bearer nope"}
        assert httpx.post(f"{url}/v1/classify", content=GOOD_PNG, headers=wrong).status_code == 401
        right = {**PNG_HEADERS, "authorization": "Bearer s3cret"}
        assert httpx.post(f"{url}/v1/classify", content=GOOD_PNG, headers=right).status_code == 200


def test_cors_is_off_unless_configured(digits_onnx):
    origin = {"origin": "http://example.test"}
    with ServerProcess(digits_onnx) as server:
        answer = httpx.get(f"{server.url}/v2/health/live", headers=origin)
        assert "access-control-allow-origin" not in answer.headers
    with ServerProcess(digits_onnx, ["--cors-origins", "http://example.test"]) as server:
        answer = httpx.get(f"{server.url}/v2/health/live", headers=origin)
        assert answer.headers["access-control-allow-origin"] == "http://example.test"


def test_model_without_metadata_serves_with_index_labels(digits_onnx, tmp_path):
    model = onnx.load(str(digits_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    with ServerProcess(bare) as server:
        assert any("no usable ln2d metadata" in line for line in server.logs)
        answer = httpx.post(f"{server.url}/v1/classify", content=GOOD_PNG, headers=PNG_HEADERS)
        assert answer.status_code == 200 and answer.json()["model"] == "bare"
        assert {p["label"] for p in answer.json()["predictions"][0]} <= {str(i) for i in range(10)}


def test_cuda_without_the_provider_fails_loudly_or_falls_back_when_asked(digits_onnx):
    if cuda_unavailable() is None:
        pytest.skip("CUDA works on this machine: the refusal path cannot be exercised")
    refused = run_cli("serve", str(digits_onnx), "--provider", "cuda", "--port", "0")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("ln2d serve: error: CUDAExec")
    with ServerProcess(digits_onnx, ["--provider", "cuda", "--cpu-fallback"]) as server:
        assert any("serving on CPU" in line for line in server.logs)
        info = httpx.get(f"{server.url}/v1/model").json()
        assert info["provider"] == "CPUExecutionProvider"


@pytest.mark.cuda
def test_cuda_provider_is_active(digits_onnx):
    if reason := cuda_unavailable():
        pytest.skip(reason)
    with ServerProcess(digits_onnx, ["--provider", "cuda"]) as server:
        info = httpx.get(f"{server.url}/v1/model").json()
        assert info["provider"] == "CUDAExecutionProvider"


@pytest.mark.cuda
def test_cuda_graphs_server_classifies(digits_onnx):
    if reason := cuda_unavailable():
        pytest.skip(reason)
    with ServerProcess(digits_onnx, ["--provider", "cuda", "--cuda-graphs"]) as server:
        answer = httpx.post(f"{server.url}/v1/classify", content=GOOD_PNG, headers=PNG_HEADERS)
        assert answer.status_code == 200 and answer.json()["provider"] == "CUDAExecutionProvider"


@pytest.mark.any_target
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent.onnx"], "model file not found"),
        (["MODEL", "--max-batch", "0"], "--max-batch"),
        (["MODEL", "--provider", "tpu"], "--provider"),
        ([], "give MODEL.onnx or REPO_DIR, or set LN2D_MODEL_PATH"),
        (["MODEL", "--model-control-mode", "poll"], "needs a model repository folder"),
        (["MODEL", "--model-control-mode", "sometimes"], "--model-control-mode"),
        (["MODEL", "--max-models", "0"], "--max-models"),
        (["MODEL", "--cuda-graphs"], "--cuda-graphs: Value error, needs --provider cuda"),
    ],
)
def test_serve_cli_errors_are_one_line(digits_onnx, args, message):
    result = run_cli("serve", *[str(digits_onnx) if a == "MODEL" else a for a in args])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_predict_cli(digits_onnx, tmp_path):
    image = tmp_path / "digit.png"
    image.write_bytes(GOOD_PNG)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with ServerProcess(digits_onnx) as server:
        ok = run_cli("predict", str(image), "--url", server.url, "--json")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["predictions"][0][0]["label"] == digit(0)[1]
        bad = run_cli("predict", str(text), "--url", server.url)
        assert bad.returncode == 2 and "HTTP 415" in bad.stderr
    gone = run_cli("predict", str(image), "--url", server.url)
    assert gone.returncode == 2 and "cannot reach" in gone.stderr


def test_predict_serve_starts_and_stops_its_own_server(digits_onnx, tmp_path):
    image = tmp_path / "digit.png"
    image.write_bytes(GOOD_PNG)
    result = run_cli("predict", "--serve", str(digits_onnx), str(image))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{image}: {digit(0)[1]} ")


def test_serve_imports_neither_torch_nor_the_model_library():
    model_library = ("ln2d.layers", "ln2d.model", "ln2d.training", "ln2d.data", "ln2d.export")
    code = (
        "import sys\n"
        "import ln2d.serve.app, ln2d.serve.server, ln2d.serve.commands, ln2d.serve.tools.launcher\n"
        "import ln2d.serve.tools.client\n"
        f"bad = [m for m in sys.modules if m == 'torch' or m.startswith({model_library!r})]\n"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000"}, 1.5),
        ({"cpu.max": "max 100000"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert cgroup_quota(tmp_path) == expected


def test_many_clients_on_both_apis_at_once(digits_onnx):
    """Bounded mixed traffic through one batch queue: every answer is right, whichever
    endpoint it came from."""
    session_meta = onnx.load(str(digits_onnx)).metadata_props
    pre = Preprocessing.from_dict(
        json.loads(next(p.value for p in session_meta if p.key == "ln2d.input"))
    )
    pixels, label = digit(0)
    tensor = pre(pixels[None, :, :, None])
    v2_body = {
        "inputs": [
            {"name": "input", "shape": list(tensor.shape), "datatype": "FP32",
             "data": tensor.ravel().tolist()}
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    }  # fmt: skip
    with ServerProcess(digits_onnx) as server, httpx.Client(base_url=server.url) as http:

        def one(i: int) -> str:
            if i % 2:
                body = http.post("/v1/classify", content=GOOD_PNG, headers=PNG_HEADERS).json()
                return body["predictions"][0][0]["label"]
            answer = http.post("/v2/models/ln2d-layernorm2d/infer", json=v2_body).json()
            return answer["outputs"][0]["data"][0].split(":")[2]

        with ThreadPoolExecutor(8) as pool:
            assert set(pool.map(one, range(64))) == {label}


@pytest.mark.any_target
def test_clients_that_leave_mid_body_are_499_not_500(digits_onnx):
    """A bounded storm of clients that send half a body and hang up, on loopback: each is
    counted as 499, nothing is a 500, no traceback is logged, and normal clients are served."""
    with ServerProcess(digits_onnx) as server:
        for _ in range(40):
            with _open(server.url, _POST_HEAD + GOOD_PNG[:100]):
                pass
        served = httpx.post(f"{server.url}/v1/classify", content=GOOD_PNG, headers=PNG_HEADERS)
        assert served.status_code == 200
        deadline = time.monotonic() + 10
        while True:  # the server notices each hang-up on its own schedule
            metrics = httpx.get(f"{server.url}/metrics").text
            left = _counter(metrics, "/v1/classify", "499")
            if left == 40 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert left == 40 and _counter(metrics, "/v1/classify", "500") == 0
        assert not [line for line in server.logs if "Traceback" in line or "ERROR" in line]


def _counter(metrics: str, endpoint: str, status: str) -> float:
    try:
        return sample(metrics, "ln2d_requests_total", endpoint=endpoint, status=status)
    except AssertionError:
        return 0.0


@pytest.mark.any_target
def test_a_body_late_for_the_deadline_gets_408_and_normal_clients_are_served(digits_onnx):
    """Twenty clients send a head and a sliver of body, then stall. Each gets 408 once the
    request deadline passes, and its connection is closed; meanwhile others are served."""
    with ServerProcess(digits_onnx, ["--timeout-s", "1"]) as server:
        stalled = [_open(server.url, _POST_HEAD + GOOD_PNG[:100]) for _ in range(20)]
        sent = time.monotonic()
        served = httpx.post(f"{server.url}/v1/classify", content=GOOD_PNG, headers=PNG_HEADERS)
        assert served.status_code == 200
        for sock in stalled:
            with sock:
                answer = _read_until_closed(sock)
                assert answer.startswith(b"HTTP/1.1 408 ") and b"connection: close" in answer
                assert b"not complete within the 1 s deadline" in answer
        assert time.monotonic() - sent < 5
        metrics = httpx.get(f"{server.url}/metrics").text
        assert _counter(metrics, "/v1/classify", "408") == 20
        assert _counter(metrics, "/v1/classify", "500") == 0


@pytest.mark.any_target
def test_connections_without_a_complete_head_are_closed(digits_onnx):
    """Silent sockets and a head trickled a byte at a time are closed after --head-timeout-s;
    a client that sends whole requests on a kept-alive connection is not."""
    with ServerProcess(digits_onnx, ["--head-timeout-s", "1"]) as server:
        silent = [_open(server.url, b"") for _ in range(200)]
        trickling = _open(server.url, b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
        opened = time.monotonic()
        with httpx.Client(base_url=server.url) as client:
            while time.monotonic() - opened < 1.5:
                with suppress(OSError):  # the server may close it mid-trickle, as it should
                    trickling.sendall(b"a")
                assert client.get("/v2/health/live").status_code == 200
                time.sleep(0.05)
        for sock in [*silent, trickling]:
            with sock:
                assert _read_until_closed(sock) == b""
        assert time.monotonic() - opened < 5


_POST_HEAD = (
    b"POST /v1/classify HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
    b"Content-Length: 100000\r\n\r\n"
)


def _open(url: str, first_bytes: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(first_bytes)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout
    bounds the wait)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.any_target
def test_bench_serve_compares_with_the_plain_endpoint(digits_onnx, tmp_path):
    """A short real run: every scenario against the plain endpoint, with ratios and the A/A."""
    out = tmp_path / "serve.json"
    args = ["--concurrency", "1", "--seconds", "0.3", "--overload", "16", "--soak", "50"]
    result = run_cli("bench-serve", str(digits_onnx), *args, "--json", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    scenarios = {row["scenario"] for row in report["rows"]}
    assert scenarios == {"classify_png_224", "classify_jpeg_12mp", "classify_multipart_8"}
    for row in report["rows"]:
        assert row["ln2d"]["non_200"] == 0 and row["plain"]["non_200"] == 0, row
        assert row["req_per_s_ratio"] == row["ln2d"]["req_per_s"] / row["plain"]["req_per_s"]
    assert set(report["a_a"]) >= {"plain", "plain again", "p50_ratio"}
    assert report["server_exit_code"] == 0
    assert "A/A: classify_png_224, plain twice" in result.stdout
    grpc = report["grpc"]  # the dev install has the grpc extra
    assert [row["concurrency"] for row in grpc["rows"]] == [1]
    assert grpc["rows"][0]["grpc"]["non_200"] == 0 and grpc["a_a"]["grpc again"]["req_per_s"] > 0
    assert "gRPC ModelInfer against v2 binary HTTP" in result.stdout
    two = report["two_models"]
    loads = {row["load"]: {"a", "b"} & set(row) for row in two["rows"]}
    assert loads == {"b alone": {"b"}, "a and b": {"a", "b"}}
    for row in two["rows"]:
        assert all(row[name]["non_200"] == 0 for name in ("a", "b") if name in row), row
    isolation = two["isolation"]
    for clients in ("retrying at once", "honouring Retry-After"):
        assert isolation[clients]["b"]["non_200"] == 0, isolation
    assert two["server_exit_code"] == 0 and "Two models in one server" in result.stdout
