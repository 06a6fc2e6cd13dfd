"""The built CPU image, run as a container runtime would run it (``make image-test``).

The image is built by ``make image`` (buildah, no daemon). Its ENTRYPOINT, ENV, USER, port,
HEALTHCHECK and stop signal are read from the image's own config, not retyped; only the host
and port are overridden, to a free loopback port (chroot isolation shares this machine's
network). The server process is found inside the container and stopped with the image's stop
signal, as Docker would stop its PID 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from ln2d.serve.tools.launcher import ServerProcess, free_port
from tests.helpers import DOCKERFILES, ROOT, image_command, run_cli
from tests.images import digit, encode, png

pytestmark = pytest.mark.image

IMAGE = os.environ.get("LN2D_TEST_IMAGE", "ln2d-serve:test")
RAY_IMAGE = os.environ.get("LN2D_TEST_RAY_IMAGE", "ln2d-serve:ray-test")
BUILDAH = ["buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs")]


@dataclass(frozen=True)
class ImageConfig:
    user: str
    env: dict[str, str]
    entrypoint: list[str]
    ports: list[str]
    stop_signal: str
    healthcheck: list[str]


def image_config(image: str) -> ImageConfig:
    found = subprocess.run(
        [*BUILDAH, "inspect", "--type", "image", image], capture_output=True, text=True
    )
    if found.returncode != 0:
        pytest.fail(f"no image {image}: run `make image` first ({found.stderr.strip()})")
    docker = json.loads(found.stdout)["Docker"]["config"]
    return ImageConfig(
        user=docker["User"],
        env=dict(item.split("=", 1) for item in docker["Env"]),
        entrypoint=docker["Entrypoint"],
        ports=list(docker["ExposedPorts"]),
        stop_signal=docker["StopSignal"],
        healthcheck=docker["Healthcheck"]["Test"],
    )


@pytest.fixture(scope="module")
def config() -> ImageConfig:
    return image_config(IMAGE)


@contextmanager
def container(image: str = IMAGE) -> Iterator[str]:
    name = subprocess.run(
        [*BUILDAH, "from", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run([*BUILDAH, "rm", name], capture_output=True)


def run_in(
    name: str,
    config: ImageConfig,
    env: dict[str, str],
    command: list[str],
    volumes: dict[Path, str] | None = None,
) -> list[str]:
    """The ``buildah run`` command line for ``command`` in the container, as the image's user
    with the image's environment updated by ``env`` and host folders mounted read-only."""
    settings = [
        arg for key, value in {**config.env, **env}.items() for arg in ("--env", f"{key}={value}")
    ]
    settings += [
        arg
        for host, inside in (volumes or {}).items()
        for arg in ("--volume", f"{host}:{inside}:ro")
    ]
    return [
        *BUILDAH,
        "run",
        "--isolation",
        "chroot",
        "--user",
        config.user,
        *settings,
        name,
        "--",
        *command,
    ]


def descendant(pid: int, command: list[str]) -> int:
    """The process under ``pid`` that runs ``command`` (the server inside the container)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(stat[1]), []).append(int(entry))
    queue = [pid]
    while queue:
        current = queue.pop()
        for child in parents.get(current, []):
            argv = Path(f"/proc/{child}/cmdline").read_text().split("\0")
            if argv[-len(command) - 1 : -1] == command and "python" in argv[0]:
                return child
            queue.append(child)
    raise AssertionError(f"no process running {command} under {pid}")


def uid_of(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return line.split()[1]
    raise AssertionError(pid)


def test_the_image_serves_as_configured_and_drains_on_its_stop_signal(config):
    port = free_port()
    overrides = {"LN2D_HOST": "127.0.0.1", "LN2D_PORT": str(port)}
    with container() as name:
        server = ServerProcess(None, command=run_in(name, config, overrides, config.entrypoint))
        try:
            pid = descendant(server.process.pid, config.entrypoint[1:])
            assert uid_of(pid) == config.user == "10001"  # not root
            _classifies_png_and_jpeg_and_answers_v2(server.url)
            healthcheck = config.healthcheck[1:]  # ["CMD", argv...]
            assert config.healthcheck[0] == "CMD"
            check = subprocess.run(
                run_in(name, config, overrides, healthcheck), capture_output=True
            )
            assert check.returncode == 0, check.stderr
            torch = subprocess.run(
                run_in(name, config, {}, ["python", "-c", "import torch"]),
                capture_output=True, text=True,
            )  # fmt: skip
            assert "No module named 'torch'" in torch.stderr
            extras = ["python", "-c", "import grpc, tritonclient.grpc, opentelemetry.sdk"]
            assert subprocess.run(run_in(name, config, {}, extras)).returncode == 0
            has_native = ["python", "-c", "from ln2d import native; assert native.available()"]
            assert subprocess.run(run_in(name, config, {}, has_native)).returncode == 0
            answer = _stop_with_a_request_in_flight(server, pid, config.stop_signal)
            assert server.process.wait(60) == 0
            assert answer.status_code == 200 and len(answer.json()["predictions"]) == 64
            after = subprocess.run(
                run_in(name, config, overrides, healthcheck), capture_output=True
            )
            assert after.returncode != 0  # the health check notices a stopped server
        finally:
            server.kill()


def test_the_image_serves_a_mounted_repository(config, digits_onnx, tmp_path):
    """As the repository Deployment runs it: a folder mounted read-only, watched."""
    repo = tmp_path / "repo"
    for name in ("digits", "digits-b"):
        made = run_cli("triton-repo", str(digits_onnx), str(repo), "--name", name)
        assert made.returncode == 0, made.stderr
    for path in [repo, *repo.rglob("*")]:  # readable by the image's user, not only by ours
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    overrides = {
        "LN2D_HOST": "127.0.0.1",
        "LN2D_PORT": str(port),
        "LN2D_MODEL_PATH": "/models/repository",
        "LN2D_MODEL_CONTROL_MODE": "poll",
    }
    with container() as name:
        command = run_in(name, config, overrides, config.entrypoint, {repo: "/models/repository"})
        with ServerProcess(None, command=command) as server:
            listing = httpx.get(f"{server.url}/v1/models").json()
            assert [m["name"] for m in listing["models"]] == ["digits", "digits-b"]
            pixels, label = digit(3)
            for model in ("digits", "digits-b"):
                answer = httpx.post(f"{server.url}/v1/models/{model}/classify",
                                    content=png(pixels), headers=PNG)  # fmt: skip
                assert answer.status_code == 200, answer.text
                assert answer.json()["predictions"][0][0]["label"] == label


def _classifies_png_and_jpeg_and_answers_v2(url: str) -> None:
    pixels, label = digit(3)
    answer = httpx.post(f"{url}/v1/classify", content=png(pixels), headers=PNG)
    assert answer.status_code == 200 and answer.json()["predictions"][0][0]["label"] == label
    photo = encode(Image.fromarray(pixels).resize((256, 256)), "JPEG", quality=90)
    answer = httpx.post(f"{url}/v1/classify", content=photo, headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]) == 5
    model = httpx.get(f"{url}/v1/model").json()
    sample = [model["input"][key] for key in ("channels", "height", "width")]
    tensor = {"name": "input", "shape": [1, *sample], "datatype": "FP32"}
    tensor["data"] = [0.0] * (sample[0] * sample[1] * sample[2])
    v2 = httpx.post(f"{url}/v2/models/{model['name']}/infer", json={"inputs": [tensor]})
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["shape"] == [1, len(model["labels"])]


PNG = {"content-type": "image/png"}


def _stop_with_a_request_in_flight(
    server: ServerProcess, pid: int, stop_signal: str
) -> httpx.Response:
    """Send a long request, then the image's stop signal to the server while it is in flight."""
    photo = png(digit(0)[0].repeat(40, axis=0).repeat(40, axis=1))  # 640x640: slow to decode
    files = [("file", (f"{i}.png", photo, "image/png")) for i in range(64)]
    answers: list[httpx.Response] = []
    sender = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{server.url}/v1/classify", files=files, timeout=60)
        )
    )
    sender.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _in_flight(server.url):
        time.sleep(0.005)
    os.kill(pid, signal.Signals[stop_signal])
    sender.join(60)
    return answers[0]


def _in_flight(url: str) -> bool:
    metrics = httpx.get(f"{url}/metrics").text
    value = next(
        line for line in metrics.splitlines() if line.startswith("ln2d_in_flight_requests ")
    )
    return float(value.split()[1]) >= 2  # the /metrics request itself is one


def test_the_image_config_is_what_the_dockerfile_and_the_manifests_say(config):
    entrypoint, env = image_command(DOCKERFILES[0])
    assert config.entrypoint == entrypoint
    assert config.env["PATH"].startswith("/opt/venv/bin:")
    assert {key: config.env[key] for key in env if key != "PATH"} == {
        key: value for key, value in env.items() if key != "PATH"
    }
    assert sorted(config.ports) == [f"{env['LN2D_PORT']}/tcp", "8001/tcp"]  # HTTP, gRPC
    assert config.stop_signal == "SIGTERM"
    deployment = yaml.safe_load((ROOT / "docker" / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    assert str(pod["securityContext"]["runAsUser"]) == config.user
    (server,) = [c for c in pod["containers"] if c["name"] == "ln2d"]
    assert server["ports"][0]["containerPort"] == int(config.env["LN2D_PORT"])
    assert pod["terminationGracePeriodSeconds"] > float(config.env["LN2D_DRAIN_TIMEOUT_S"])
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["ln2d"]
    assert compose["ports"][0].endswith(f":{config.env['LN2D_PORT']}")
    grace = float(compose["stop_grace_period"].rstrip("s"))
    services = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]
    repository = services["ln2d-repository"]
    (volume,) = repository["volumes"]
    assert volume.split(":")[1] == repository["environment"]["LN2D_MODEL_PATH"]
    assert volume.endswith(":ro") and repository["image"] == compose["image"]
    traced = services["ln2d-traced"]
    grpc_port = traced["environment"]["LN2D_GRPC_PORT"]
    assert any(port.endswith(f":{grpc_port}") for port in traced["ports"])
    endpoint = traced["environment"]["LN2D_OTLP_ENDPOINT"]
    assert endpoint.startswith("http://jaeger:4318/") and "jaeger" in services
    assert grace > float(config.env["LN2D_DRAIN_TIMEOUT_S"])


def rayservice_env(group: str) -> dict[str, str]:
    """The environment docker/kubernetes-ray gives the Ray container of ``group``."""
    manifest = yaml.safe_load((ROOT / "docker" / "kubernetes-ray" / "rayservice.yaml").read_text())
    cluster = manifest["spec"]["rayClusterConfig"]
    spec = cluster["headGroupSpec"] if group == "head" else cluster["workerGroupSpecs"][0]
    (ray_container,) = spec["template"]["spec"]["containers"]
    return {item["name"]: item["value"] for item in ray_container["env"]}


def test_the_ray_image_joins_a_cluster_as_a_worker_and_serves_the_replica(monkeypatch):
    """As KubeRay runs it: ``ray start`` in the image, with the manifest's environment (Ray's
    HAProxy ingress), joins a head (here Ray's on this machine, with no CPUs, so the replica
    can only run in the container), and the replica serves the model baked into the image
    through HAProxy on the head."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from ln2d.serve.ray_serve import Scaling, start
    from ln2d.serve.ray_supervisor import environment
    from ln2d.serve.settings import Settings

    config = image_config(RAY_IMAGE)
    worker_env = rayservice_env("workers")
    assert Path(worker_env["RAY_SERVE_HAPROXY_BINARY_PATH"]).parent == Path(
        config.env["PATH"].split(":")[0]
    )  # the image's own venv
    # The head is this checkout's Python: its ln2d-haproxy, the rest as the manifest says.
    for key, value in {**rayservice_env("head"), **environment("haproxy")}.items():
        monkeypatch.setenv(key, value)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    ray.init(address=cluster.address, log_to_driver=False)
    # The head runs this checkout's Python; the image its own patch release of 3.11.
    join = ["ray", "start", "--address", cluster.address, "--num-cpus", "1", "--block"]
    minor = {"RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "minor"}
    try:
        with container(RAY_IMAGE) as name:
            worker = subprocess.Popen(run_in(name, config, {**minor, **worker_env}, join))
            try:
                deadline = time.monotonic() + 120
                while len([n for n in ray.nodes() if n["Alive"]]) < 2:
                    assert worker.poll() is None, "ray start failed in the image"
                    assert time.monotonic() < deadline, "the image never joined the cluster"
                    time.sleep(0.2)
                port = free_port()
                serve.start(
                    proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port}
                )
                settings = Settings(model_path="/models/model.onnx", port=port, access_log=False)
                url = start(settings, Scaling(replicas=1))
                _classifies_png_and_jpeg_and_answers_v2(url)
                listeners = subprocess.run(
                    ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True
                ).stdout
                assert '(("haproxy"' in listeners, listeners  # the ingress is HAProxy
                (replica,) = [
                    a for a in list_actors(filters=[("state", "=", "ALIVE")])
                    if a.class_name.startswith("ServeReplica:")
                ]  # fmt: skip
                assert replica.node_id != cluster.head_node.node_id  # in the container
                serve.shutdown()
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(60)
    finally:
        ray.shutdown()
        cluster.shutdown()
