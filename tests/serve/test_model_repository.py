"""``ln2d serve REPO_DIR``: real server processes on loopback serving a real repository folder
(written by ``ln2d triton-repo`` and by hand), stock ``tritonclient.http`` for the index, load
and unload, real files appearing in a polled folder. Every load loop is bounded."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from ln2d.serve.tools.launcher import ServerProcess
from ln2d.serve.tools.loadgen import LoadResult, http_request, run_load
from tests.helpers import reference_session, run_cli
from tests.images import png
from tests.tiny_models import classifier

pytestmark = [pytest.mark.integration, pytest.mark.slow]

X = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
TENSOR = {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": X.ravel().tolist()}
TINY_INFER = http_request(
    "POST",
    "/v2/models/tiny/infer",
    json.dumps({"inputs": [TENSOR]}).encode(),
    {"content-type": "application/json"},
)


def add_version(repo: Path, name: str, version: int, seed: int = 1) -> Path:
    """Write a tiny classifier as ``repo/name/version/model.onnx``, whole or not at all (a
    rename), as anyone should drop a file into a watched folder."""
    path = repo / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    onnx.save(classifier(seed=seed), str(partial))
    partial.rename(path)
    return path


def logits(path: Path) -> np.ndarray:
    return reference_session(path).run(None, {"input": X})[0]


def serve(repo: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    return ServerProcess(repo, ["--no-access-log", "--max-batch", "8", *args], env=env)


def index(url: str, **headers: str) -> dict[str, list[dict]]:
    """The repository index, per model name."""
    answer = httpx.post(f"{url}/v2/repository/index", headers=headers)
    assert answer.status_code == 200, answer.text
    by_name: dict[str, list[dict]] = {}
    for entry in answer.json():
        by_name.setdefault(entry["name"], []).append(entry)
    return by_name


def wait_until(condition, timeout: float = 60.0, what: str = "the condition") -> None:
    """Poll ``condition`` (an event the server announces in its index or answers)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def rss_bytes(server: ServerProcess) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


@pytest.fixture
def repo(tmp_path, digits_onnx):
    """Two models: the digits model (ln2d triton-repo, as a user makes one) and tiny v1."""
    repo = tmp_path / "repo"
    result = run_cli("triton-repo", str(digits_onnx), str(repo), "--name", "digits")
    assert result.returncode == 0, result.stderr
    add_version(repo, "tiny", 1)
    return repo


def test_tritonclient_index_load_and_unload(repo, digits_onnx):
    with serve(repo, "--model-control-mode", "explicit", "--load-models", "digits") as server:
        client = triton.InferenceServerClient(f"{server.host}:{server.port}")
        entries = {e["name"]: e for e in client.get_model_repository_index()}
        assert entries["digits"] == {"name": "digits", "version": "1", "state": "READY",
                                     "reason": ""}  # fmt: skip
        assert entries["tiny"]["state"] == "UNAVAILABLE" and not client.is_model_ready("tiny")

        client.load_model("tiny")  # answers once the model is warm
        assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "1")
        assert [e["name"] for e in client.get_model_repository_index() if e["state"] == "READY"]
        tensor = triton.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer("tiny", [tensor])
        np.testing.assert_allclose(result.as_numpy("logits"), logits(repo / "tiny/1/model.onnx"),
                                   rtol=1e-6)  # fmt: skip
        assert result.get_response()["model_version"] == "1"
        digits = np.zeros((1, 1, 16, 16), np.float32)
        tensor = triton.InferInput("input", list(digits.shape), "FP32")
        tensor.set_data_from_numpy(digits)
        expected = reference_session(digits_onnx).run(None, {"input": digits})[0]
        np.testing.assert_allclose(client.infer("digits", [tensor]).as_numpy("logits"), expected,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip

        client.unload_model("tiny")
        entries = [e for e in client.get_model_repository_index() if e["name"] == "tiny"]
        assert entries == [{"name": "tiny", "version": "1", "state": "UNAVAILABLE",
                            "reason": "unloaded"}]  # fmt: skip
        with pytest.raises(InferenceServerException, match="not being served"):
            client.infer("tiny", [triton.InferInput("input", [1, 1, 8, 8], "FP32")])
        with pytest.raises(InferenceServerException, match="no model 'nope'"):
            client.load_model("nope")
        assert client.is_model_ready("digits")  # the other model never noticed
    assert not [line for line in server.logs if "Traceback" in line]


def test_v1_routes_name_the_model_and_the_default(repo):
    body = _png_8x8()
    with serve(repo, "--default-model", "tiny") as server:
        answer = httpx.post(f"{server.url}/v1/classify", content=body,
                            headers={"content-type": "image/png"})  # fmt: skip
        assert answer.status_code == 200 and answer.json()["model"] == "tiny"
        named = httpx.post(f"{server.url}/v1/models/digits/classify", content=body,
                           headers={"content-type": "image/png"})  # fmt: skip
        assert named.status_code == 200, named.text
        assert (named.json()["model"], named.json()["version"]) == ("digits", "1")
        listing = httpx.get(f"{server.url}/v1/models").json()
        assert [(m["name"], m["version"]) for m in listing["models"]] == [
            ("digits", "1"),
            ("tiny", "1"),
        ]
        # The split is stated: each model's share of the budget, and what each one holds.
        assert listing["max_models"] == 4 and listing["default_model"] == "tiny"
        assert all(m["threads"] == listing["threads_per_model"] >= 1 for m in listing["models"])
        assert all(m["memory_bytes"] > 0 for m in listing["models"])
        assert httpx.get(f"{server.url}/v1/models/tiny").json()["labels"] == list("0123456789")
        missing = httpx.post(f"{server.url}/v1/models/nope/classify", content=body,
                             headers={"content-type": "image/png"})  # fmt: skip
        assert missing.status_code == 404 and "unknown model 'nope'" in missing.json()["error"]
    image = repo.parent / "digit.png"
    image.write_bytes(body)
    with serve(repo) as server:  # two models and no default: /v1/classify cannot guess
        answer = httpx.post(f"{server.url}/v1/classify", content=body,
                            headers={"content-type": "image/png"})  # fmt: skip
        assert answer.status_code == 404 and "no default model" in answer.json()["error"]
        asked = run_cli("predict", str(image), "--url", server.url, "--model", "tiny", "--json")
        assert asked.returncode == 0, asked.stderr
        assert json.loads(asked.stdout)["model"] == "tiny"
        unnamed = run_cli("predict", str(image), "--url", server.url)
        assert unnamed.returncode == 2 and "no default model" in unnamed.stderr


def test_access_log_lines_and_metrics_name_the_model_and_version(repo):
    with ServerProcess(repo, ["--max-batch", "8"]) as server:
        answer = httpx.post(
            f"{server.url}/v2/models/tiny/versions/1/infer", json={"inputs": [TENSOR]}
        )
        assert answer.status_code == 200, answer.text
        metrics = httpx.get(f"{server.url}/metrics").text
        wait_until(lambda: any("/v2/models/tiny/versions/1/infer" in line for line in server.logs))
    (line,) = [line for line in server.logs if "/v2/models/tiny/versions/1/infer" in line]
    access = json.loads(json.loads(line)["message"])
    assert (access["model"], access["version"], access["status"]) == ("tiny", "1", 200)
    assert 'ln2d_model_ready{model="digits",version="1"} 1.0' in metrics
    assert 'ln2d_stage_seconds_count{model="tiny",stage="inference",version="1"} 1.0' in metrics


def test_load_and_unload_are_explicit_only_and_need_the_token(repo):
    with serve(repo) as server:  # --model-control-mode none: the repository is fixed
        answer = httpx.post(f"{server.url}/v2/repository/models/tiny/unload")
        assert answer.status_code == 403 and "not allowed" in answer.json()["error"]
        assert {e["state"] for entries in index(server.url).values() for e in entries} == {"READY"}
    env = {"LN2D_TOKEN": "s3cret"}
    with serve(repo, "--model-control-mode", "explicit", env=env) as server:
        assert httpx.post(f"{server.url}/v2/repository/models/tiny/load").status_code == 401
        assert httpx.post(f"{server.url}/v2/repository/index").status_code == 401
        auth = {"authorization": "Bearer s3cret"}
        loaded = httpx.post(f"{server.url}/v2/repository/models/tiny/load", headers=auth)
        assert loaded.status_code == 200, loaded.text
        assert index(server.url, **auth)["tiny"][0]["state"] == "READY"
        refused = httpx.post(f"{server.url}/v2/repository/models/tiny/load", headers=auth,
                             json={"parameters": {"config": "{}"}})  # fmt: skip
        assert refused.status_code == 400 and "not supported" in refused.json()["error"]


def test_a_polled_repository_loads_new_models_refuses_broken_ones_and_serves_on(repo):
    with serve(repo, "--model-control-mode", "poll", "--poll-interval-s", "0.2") as server:
        traffic = Traffic(server, TINY_INFER, concurrency=2)
        with traffic:
            broken = repo / "broken" / "1" / "model.onnx"
            broken.parent.mkdir(parents=True)
            broken.write_bytes(b"this is not an ONNX model")
            wait_until(lambda: "broken" in index(server.url), what="the broken model's entry")
            wait_until(
                lambda: index(server.url)["broken"][-1]["reason"] != "not loaded",
                what="the broken model's load attempt",
            )
            (entry,) = [e for e in index(server.url)["broken"] if "version" not in e]
            assert entry["state"] == "UNAVAILABLE" and "cannot load" in entry["reason"]

            add_version(repo, "second", 1, seed=3)
            wait_until(lambda: _ready(server.url, "second"), what="the new model")
            shutil.rmtree(repo / "second")
            wait_until(lambda: not _ready(server.url, "second"), what="the removed model")
        assert traffic.result.statuses and traffic.result.failures == 0
        assert traffic.result.status_counts() == {200: len(traffic.result.statuses)}


@pytest.mark.any_target
def test_a_version_swap_under_load_fails_no_request(repo):
    """Concurrency 32 for 30 s; after 10 s version 2 is added and loaded, which (latest 1)
    retires version 1, whose folder is then deleted."""
    v1 = logits(repo / "tiny/1/model.onnx")
    with serve(repo, "--model-control-mode", "explicit", "--load-models", "tiny") as server:
        client = triton.InferenceServerClient(f"{server.host}:{server.port}")
        traffic = Traffic(server, TINY_INFER, concurrency=32, seconds=30, keep_bodies=True)
        with traffic:
            time.sleep(10)  # the protocol: ten seconds of steady load before the swap
            v2 = logits(add_version(repo, "tiny", 2, seed=2))
            swap_start = time.perf_counter()
            client.load_model("tiny")
            swap_end = time.perf_counter()
            shutil.rmtree(repo / "tiny" / "1")
        result = traffic.result
    assert result.failures == 0 and result.status_counts() == {200: len(result.statuses)}
    answers = [json.loads(body) for body in result.bodies]
    expected = {"1": v1, "2": v2}
    for answer in answers:  # every answer names the version that computed it
        version = answer["model_version"]
        computed = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(1, -1)
        np.testing.assert_allclose(computed, expected[version], rtol=1e-6)
    starts, ends = np.asarray(result.starts), np.asarray(result.starts) + result.latencies
    versions = np.asarray([a["model_version"] for a in answers])
    assert set(versions[ends < swap_start]) == {"1"} and set(versions[starts > swap_end]) == {"2"}
    latencies = np.asarray(result.latencies)
    before = latencies[(starts > starts[0] + 2) & (ends < swap_start)]
    during = latencies[(ends >= swap_start) & (starts <= swap_end)]
    p99_before, p99_during = np.percentile(before, 99), np.percentile(during, 99)
    print(f"swap: {len(result.statuses)} answers, swap {1000 * (swap_end - swap_start):.0f} ms, "
          f"p99 before {1000 * p99_before:.1f} ms, during {1000 * p99_during:.1f} ms")  # fmt: skip
    assert p99_during <= 2 * p99_before


@pytest.mark.any_target
def test_load_and_unload_50_times_returns_the_memory(repo):
    with serve(repo, "--model-control-mode", "explicit", "--load-models", "tiny") as server:
        client = triton.InferenceServerClient(f"{server.host}:{server.port}")
        with Traffic(server, TINY_INFER, concurrency=2) as traffic:
            # One cycle first: the first load also imports and allocates once (the parity
            # record's replay, ONNX Runtime's first session of the model); a leak grows on.
            client.load_model("digits")
            client.unload_model("digits")
            started = rss_bytes(server)
            for _ in range(50):
                client.load_model("digits")
                client.unload_model("digits")
            ended = rss_bytes(server)
        print(f"RSS {started / 2**20:.1f} MiB -> {ended / 2**20:.1f} MiB after 50 loads")
        assert ended <= started * 1.05
        assert traffic.result.status_counts() == {200: len(traffic.result.statuses)}


@pytest.mark.any_target
def test_one_model_overloaded_leaves_the_other_alone(repo):
    with serve(repo, "--max-queue", "8") as server:
        digits = http_request(
            "POST", "/v1/models/digits/classify", _png_8x8(), {"content-type": "image/png"}
        )
        flood = Traffic(server, digits, concurrency=64, seconds=5)
        calm = Traffic(server, TINY_INFER, concurrency=2, seconds=5)
        with flood, calm:
            pass
    assert flood.result.status_counts().get(503, 0) > 0  # the flooded model refuses work
    assert calm.result.failures == 0
    assert calm.result.status_counts() == {200: len(calm.result.statuses)}


class Traffic:
    """Clients on a loopback server in a thread, for ``seconds``, or until the block ends."""

    def __init__(
        self,
        server: ServerProcess,
        request: bytes,
        concurrency: int,
        seconds: float = 120.0,
        keep_bodies: bool = False,
    ) -> None:
        self.args = (server.host, server.port, request, concurrency, seconds)
        self.keep_bodies = keep_bodies
        self.timed = seconds < 120.0
        self.result = LoadResult(0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        host, port, request, concurrency, seconds = self.args
        if self.timed:
            self.result = run_load(host, port, request, concurrency, seconds,
                                   keep_bodies=self.keep_bodies)  # fmt: skip
            return
        while not self._stop.is_set():  # short rounds, so that the block's end stops it
            part = run_load(host, port, request, concurrency, 0.2)
            self.result.statuses += part.statuses
            self.result.latencies += part.latencies
            self.result.failures += part.failures

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _ready(url: str, name: str) -> bool:
    return any(e["state"] == "READY" for e in index(url).get(name, []))


def _png_8x8() -> bytes:
    return png(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
