"""ln2d on Ray Serve (``ln2d.serve.ray_serve``), on a real Ray cluster on this machine: a head
node and two worker nodes, each its own set of processes, as Ray's own tests start them; the
replicas on the workers, Ray's HAProxy ingress on the head (the ingress ``ln2d serve-ray``
starts Ray with), clients on loopback."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import yaml

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'ln2d[ray]'")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402
from ray.util.state import list_actors  # noqa: E402

from ln2d.serve import ray_supervisor  # noqa: E402
from ln2d.serve.ray_serve import DEPLOYMENT, Scaling, start, stop  # noqa: E402
from ln2d.serve.settings import Settings  # noqa: E402
from ln2d.serve.tools.launcher import ServerProcess, free_port  # noqa: E402
from tests.images import digit, png  # noqa: E402
from tests.serve.prometheus import sample  # noqa: E402
from tests.tiny_models import classifier  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=4)]

from tests.helpers import ROOT, run_cli  # noqa: E402

PNG = png(digit(3)[0])
SERVE_CONFIG = ROOT / "docker" / "ray" / "serve-config.yaml"
PNG_HEADERS = {"content-type": "image/png"}


@dataclass
class RayCluster:
    cluster: Cluster
    workers: list
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def deploy(self, model: Path, scaling: Scaling, **settings) -> str:
        fields = {"access_log": False, "max_batch": 8, **settings}
        return start(Settings(model_path=model, port=self.port, **fields), scaling)

    def replica_nodes(self) -> list[str]:
        replicas = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
        return [a.node_id for a in replicas if a.class_name.startswith("ServeReplica:")]

    def running_replicas(self) -> int:
        status = serve.status().applications.get(DEPLOYMENT)
        if status is None:
            return 0
        replicas = status.deployments[DEPLOYMENT].replica_states
        return replicas.get("RUNNING", 0)


@pytest.fixture(scope="module")
def cluster():
    saved = dict(os.environ)
    os.environ.update(ray_supervisor.environment("haproxy"))  # Ray's processes inherit it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        yield RayCluster(cluster, workers, port)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def wait_until(condition, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held (polled), failing after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"timed out after {timeout} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - started


@dataclass
class Outcome:
    start: float
    seconds: float
    status: int | str  # "error": the connection failed
    body: bytes


@dataclass
class Clients:
    """``concurrency`` threads posting ``body`` to ``url`` until the block ends; an answer that
    ``retry`` accepts is retried once, as a client of a load-balanced service does."""

    url: str
    body: bytes
    headers: dict[str, str]
    concurrency: int
    retry: Callable[[int | str, bytes], bool] = lambda status, body: False
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(self.concurrency)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _loop(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                status, body = self._post(client)
                if self.retry(status, body):
                    status, body = self._post(client)
                self.outcomes.append(Outcome(started, time.monotonic() - started, status, body))

    def _post(self, client: httpx.Client) -> tuple[int | str, bytes]:
        try:
            answer = client.post(self.url, content=self.body, headers=self.headers)
        except httpx.TransportError as error:
            return "error", str(error).encode()
        return answer.status_code, answer.content

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]


def test_replicas_spread_over_the_workers_and_answer_as_ln2d_serve(cluster, digits_onnx):
    cluster.deploy(digits_onnx, Scaling(replicas=2))
    assert sorted(cluster.replica_nodes()) == sorted(w.node_id for w in cluster.workers)
    with ServerProcess(digits_onnx, ["--no-access-log", "--max-batch", "8"]) as plain:
        for path, body, headers in [
            ("/v1/classify", PNG, PNG_HEADERS),
            ("/v1/classify", b"not an image", PNG_HEADERS),
            ("/v2/models/ln2d-layernorm2d/infer", b"{}", {"content-type": "application/json"}),
        ]:
            ours = httpx.post(cluster.url + path, content=body, headers=headers)
            theirs = httpx.post(plain.url + path, content=body, headers=headers)
            assert ours.status_code == theirs.status_code
            assert _without_timings(ours.json()) == _without_timings(theirs.json())
        for path in ("/v2/models/ln2d-layernorm2d", "/v2/health/ready"):
            assert httpx.get(cluster.url + path).json() == httpx.get(plain.url + path).json()
        described = [
            httpx.get(url + "/v1/models").json()["models"] for url in (cluster.url, plain.url)
        ]
        same = ("name", "version", "labels", "input", "provider", "precision")
        assert [[{k: m[k] for k in same} for m in models] for models in described] == [
            [{k: m[k] for k in same} for m in described[1]]
        ] * 2  # threads, memory and load times are each server's own
        import tritonclient.http as triton

        x = np.random.default_rng(0).standard_normal((3, 1, 16, 16)).astype(np.float32)
        answers = []
        for url in (cluster.url, plain.url):
            client = triton.InferenceServerClient(url.removeprefix("http://"))
            tensor = triton.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            wanted = triton.InferRequestedOutput("logits", binary_data=True)
            answers.append(client.infer("ln2d-layernorm2d", [tensor], outputs=[wanted]))
        ours, theirs = (a.as_numpy("logits") for a in answers)
        assert ours.tobytes() == theirs.tobytes()  # bit for bit
    page = httpx.get(cluster.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    metrics = httpx.get(cluster.url + "/metrics")
    assert metrics.status_code == 200 and "ln2d_requests_total" in metrics.text


def _without_timings(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k not in ("timings_ms", "id")}


def unavailable(status: int | str, body: bytes) -> bool:
    """A 503 or a connection error: what a client retries."""
    return status in (503, "error")


def unavailable_or_lost_by_ray(status: int | str, body: bytes) -> bool:
    """Also Ray's own 500 (plain text, where ln2d's errors are JSON): what its ingress answers
    for a request whose replica died under it (HAProxy's 502 becomes Ray's 500 page)."""
    return unavailable(status, body) or (status == 500 and not body.startswith(b"{"))


@pytest.mark.any_target
def test_a_worker_node_lost_under_load(cluster, digits_onnx):
    """Concurrency 16 for 30 s: 5 clients that never retry, 6 that retry a 503 or a connection
    error once, 5 that also retry Ray's own 500. After 10 s one worker node's processes are
    killed, and its replica comes back on the other."""
    cluster.deploy(digits_onnx, Scaling(replicas=2))
    url = cluster.url + "/v1/classify"
    never = Clients(url, PNG, PNG_HEADERS, 5)
    on_503 = Clients(url, PNG, PNG_HEADERS, 6, retry=unavailable)
    on_ray_500 = Clients(url, PNG, PNG_HEADERS, 5, retry=unavailable_or_lost_by_ray)
    readiness: list[int] = []
    with never, on_503, on_ray_500:
        time.sleep(10)  # the protocol: ten seconds of steady load before the loss
        lost = cluster.workers.pop(0)
        killed_at = time.monotonic()
        cluster.cluster.remove_node(lost, allow_graceful=False)
        recovered = wait_until(
            lambda: cluster.running_replicas() == 2 and lost.node_id not in cluster.replica_nodes(),
            timeout=60,
            what="two replicas running again on the surviving node",
        )
        while time.monotonic() < killed_at + 20:
            readiness.append(httpx.get(cluster.url + "/v2/health/ready", timeout=30).status_code)
            time.sleep(0.5)
    cluster.workers.append(cluster.cluster.add_node(num_cpus=2))  # for the tests that follow
    groups = {"never": never, "on 503": on_503, "on Ray's 500 too": on_ray_500}
    counts = ", ".join(
        f"{name}: {len(c.failed())} of {len(c.outcomes)} failed "
        f"{sorted({str(o.status) for o in c.failed()})}"
        for name, c in groups.items()
    )
    print(f"node lost: retrying {counts}; replicas back after {recovered:.1f} s")
    # HAProxy replays on the other replica what the lost one closed with no answer
    # (ray_supervisor.HAPROXY_RETRY_ON), so one retry of a 503 or a lost connection is enough,
    # all but rarely: a retry can meet a second closed connection while HAProxy reloads for the
    # new replica set (1 of 3,633 once, on a loaded 2-core CI run; 0 in three runs alone).
    for retrying in (on_503, on_ray_500):
        assert len(retrying.failed()) * 1000 <= len(retrying.outcomes), counts
        assert all(o.status == "error" for o in retrying.failed()), counts
    # What the clients that never retry lost are requests in flight on the node: Ray's 500, or
    # the connection HAProxy closes when the replica's goes; never an error of ln2d's.
    lost = [o for c in groups.values() for o in c.failed()]
    assert all(unavailable_or_lost_by_ray(o.status, o.body) for o in lost), lost[:3]
    assert recovered < 60
    assert set(readiness) == {200}  # a replica was always there to say so


@ray.remote(num_cpus=2)
class Hold:
    """Takes a worker node's two CPUs, so that no replica can run there."""

    def ready(self) -> bool:
        return True


@pytest.mark.any_target
def test_readiness_is_not_200_while_no_replica_runs(cluster, digits_onnx):
    """One replica, whose node is killed while the other worker's CPUs are taken: no replica
    can run, and readiness probes (2 s timeout, as a Kubernetes probe has) do not answer 200
    until the CPUs are free and the replica runs again."""
    cluster.deploy(digits_onnx, Scaling(replicas=1))
    wait_until(lambda: len(cluster.replica_nodes()) == 1, 60, "one replica left")
    (node,) = cluster.replica_nodes()
    lost = next(w for w in cluster.workers if w.node_id == node)
    other = next(w for w in cluster.workers if w.node_id != node)
    pinned = NodeAffinitySchedulingStrategy(other.node_id, soft=False)
    hold = Hold.options(scheduling_strategy=pinned).remote()
    ray.get(hold.ready.remote())
    cluster.workers.remove(lost)
    cluster.cluster.remove_node(lost, allow_graceful=False)
    wait_until(
        lambda: not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == lost.node_id),
        60,
        "the lost node declared dead",
    )
    probes = [_probe(cluster.url) for _ in range(5)]
    ray.kill(hold)
    back = wait_until(lambda: _probe(cluster.url) == 200, 90, "ready again once a replica runs")
    cluster.workers.append(cluster.cluster.add_node(num_cpus=2))
    print(f"readiness without a replica: {probes}; 200 again {back:.1f} s after the CPUs freed")
    assert 200 not in probes


def _probe(url: str) -> int | str:
    try:
        return httpx.get(url + "/v2/health/ready", timeout=2).status_code
    except httpx.TimeoutException:
        return "timeout"


@pytest.mark.any_target
def test_autoscaling_grows_under_load_and_shrinks_after(cluster, digits_onnx):
    scaling = Scaling(
        minimum=1, maximum=2, target_ongoing_requests=2, upscale_delay_s=1, downscale_delay_s=3
    )
    cluster.deploy(digits_onnx, scaling)
    assert wait_until(lambda: cluster.running_replicas() == 1, 60, "one replica") >= 0
    with Clients(cluster.url + "/v1/classify", PNG, PNG_HEADERS, 16) as clients:
        grew = wait_until(lambda: cluster.running_replicas() == 2, 90, "a second replica")
    shrank = wait_until(lambda: cluster.running_replicas() == 1, 90, "back to one replica")
    print(f"autoscaling: 1 -> 2 replicas {grew:.1f} s into the load, 2 -> 1 {shrank:.1f} s after")
    assert not clients.failed()


@pytest.mark.any_target
def test_a_rolling_update_to_a_new_model_file_fails_no_request(cluster, tmp_path):
    old, new = tmp_path / "old" / "model.onnx", tmp_path / "new" / "model.onnx"
    for path, seed in ((old, 1), (new, 2)):
        path.parent.mkdir()
        onnx.save(classifier(seed=seed), str(path))
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    tensor = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}
    body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    cluster.deploy(old, Scaling(replicas=2))
    name = httpx.get(cluster.url + "/v1/models").json()["models"][0]["name"]
    url = cluster.url + f"/v2/models/{name}/infer"
    with Clients(url, body, {"content-type": "application/json"}, 8) as clients:
        wait_until(lambda: len(clients.outcomes) >= 50, 30, "answers from the old model")
        updated_at = time.monotonic()
        cluster.deploy(new, Scaling(replicas=2))  # returns once the new replicas serve
        done_at = time.monotonic()
        wait_until(lambda: any(o.start > done_at for o in clients.outcomes), 30, "answers after it")
    assert not clients.failed(), clients.failed()[:3]
    answers = {}
    for outcome in clients.outcomes:
        data = json.loads(outcome.body)["outputs"][0]["data"]
        answers.setdefault(tuple(np.round(data, 5)), []).append(outcome.start)
    assert len(answers) == 2  # the old model's logits, then the new one's
    before, after = sorted(answers.values(), key=min)
    assert max(before) < done_at and min(after) > updated_at
    print(f"rolling update: {len(clients.outcomes)} answers, none failed")


@pytest.mark.any_target
def test_the_serve_config_file_deploys_on_the_cluster(cluster, digits_onnx):
    """docker/ray/serve-config.yaml's application, as ``serve run`` builds it, with this
    test's model for its model path."""
    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    module, _, builder = app["import_path"].partition(":")
    args = {**app["args"], "model_path": str(digits_onnx)}
    built = getattr(importlib.import_module(module), builder)(args)
    serve.run(built, name=app["name"], route_prefix=app["route_prefix"])
    answer = httpx.post(cluster.url + "/v1/classify", content=PNG, headers=PNG_HEADERS)
    assert answer.status_code == 200 and answer.json()["predictions"][0][0]["label"] == "3"
    assert app["args"]["min_replicas"] <= cluster.running_replicas() <= app["args"]["max_replicas"]


@pytest.mark.any_target
def test_deleting_the_application_drains_the_requests_in_flight(cluster, digits_onnx):
    cluster.deploy(digits_onnx, Scaling(replicas=1), max_delay_ms=1000, max_batch=64)
    url = cluster.url + "/v1/classify"
    with Clients(url, PNG, PNG_HEADERS, 4) as clients:
        # the first request runs alone; the next ones wait in the 1 s batch window
        wait_until(lambda: _queued(cluster.url) >= 2, 30, "requests waiting for a batch")
        stop()
    answered = [o.status for o in clients.outcomes]
    assert answered.count(200) >= 3 and set(answered) - {200} <= {404}, answered
    assert httpx.get(cluster.url + "/v2/health/ready").status_code == 404  # no such route now


def _queued(url: str) -> float:
    return sample(httpx.get(url + "/metrics", timeout=30).text, "ln2d_queue_depth")


@pytest.mark.any_target
def test_the_command_serves_until_sigterm_then_drains_and_deletes(cluster, digits_onnx):
    command = [sys.executable, "-m", "ln2d", "serve-ray", str(digits_onnx), "--replicas", "1",
               "--address", cluster.cluster.address, "--port", str(cluster.port),
               "--no-access-log"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stderr:  # it says so once every replica has warmed up
            lines.append(line)
            if "serving at" in line:
                break
        assert f"serving at http://127.0.0.1:{cluster.port}" in lines[-1], "".join(lines[-20:])
        answer = httpx.post(cluster.url + "/v1/classify", content=PNG, headers=PNG_HEADERS)
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert httpx.get(cluster.url + "/v2/health/ready").status_code == 404


@pytest.mark.any_target
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent.onnx"], "model file or folder not found"),
        (["MODEL", "--autoscale", "3..1"], "--autoscale: want MIN..MAX"),
        (["MODEL", "--replicas", "0"], "--replicas: at least 1"),
        (["MODEL", "--grpc-port", "8001"], "Ray's HTTP ingress does not carry ln2d's gRPC service"),
    ],
)
def test_serve_ray_refuses_bad_flags_in_one_line(digits_onnx, args, message):
    args = [str(digits_onnx) if a == "MODEL" else a for a in args]
    done = run_cli("serve-ray", *args)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("ln2d serve-ray: error: ") and message in line


HOSTILE = [
    ("POST", "/v1/classify", {"content-type": "image/png"}, b"not an image"),
    ("POST", "/v1/classify", {"content-type": "text/plain"}, b"hello"),
    ("POST", "/v1/classify", {"content-type": "image/png"}, b"\x89PNG" + bytes(1_100_000)),
    ("POST", "/v1/classify", {"content-type": "image/png", "content-encoding": "gzip"}, PNG),
    ("POST", "/v2/models/ln2d-layernorm2d/infer", {"content-type": "application/json"}, b"{"),
    ("GET", "/v2/models/no-such-model", {}, b""),
]


@pytest.mark.any_target
def test_hostile_requests_through_haproxy_get_the_answers_ln2d_serve_gives(cluster, digits_onnx):
    """The same statuses and the same JSON errors as a plain ln2d serve, request for request,
    and the replica serves on."""
    limits = {"max_body_bytes": 1_000_000}
    cluster.deploy(digits_onnx, Scaling(replicas=1), **limits)
    with ServerProcess(digits_onnx, ["--max-body-bytes", "1000000", "--no-access-log"]) as plain:
        for method, path, headers, body in HOSTILE:
            ray_answer = httpx.request(method, cluster.url + path, headers=headers, content=body)
            plain_answer = httpx.request(method, plain.url + path, headers=headers, content=body)
            assert ray_answer.status_code == plain_answer.status_code >= 400, path
            assert ray_answer.json() == plain_answer.json(), path
    answer = httpx.post(cluster.url + "/v1/classify", content=PNG, headers=PNG_HEADERS)
    assert answer.status_code == 200
