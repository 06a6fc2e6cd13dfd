"""The Kubernetes and KServe manifests: schema-valid, and in agreement with the server they run
(probe paths answer 200 on a real server started with the manifest's environment, ports and
the drain agree, the grace period outlasts preStop plus the drain)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import DOCKERFILES, ROOT, image_command, run_cli

pytestmark = pytest.mark.integration

KUBERNETES = sorted((ROOT / "docker" / "kubernetes").glob("*.yaml"))
REPOSITORY = sorted((ROOT / "docker" / "kubernetes-repository").glob("*.yaml"))
KSERVE = sorted((ROOT / "docker" / "kserve").glob("*.yaml"))
K8S_VERSION = "1.33.0"
IMAGE_ENV = image_command(DOCKERFILES[0])[1]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def by_kind(paths: list[Path]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for path in paths:
        doc = load(path)
        found.setdefault(doc["kind"], []).append(doc)
    return found


# Where each kind keeps its pod-level ``containers`` list.
POD_SPEC = {
    "Deployment": lambda spec: spec["template"]["spec"],
    "ServingRuntime": lambda spec: spec,
    "InferenceService": lambda spec: spec["predictor"],
}


def containers() -> list[tuple[str, dict]]:
    """Every ln2d container in every manifest, with the name of the manifest it is in."""
    found = []
    for path in KUBERNETES + REPOSITORY + KSERVE:
        doc = load(path)
        if doc["kind"] in POD_SPEC:
            pod = POD_SPEC[doc["kind"]](doc["spec"])
            found += [(f"{path.parent.name}/{path.name}", c) for c in pod.get("containers", [])]
    return found


EACH_CONTAINER = pytest.mark.parametrize(
    ("where", "container"), containers(), ids=[f"{w}:{c['name']}" for w, c in containers()]
)


def env_of(container: dict) -> dict[str, str]:
    """The container's LN2D_* settings: the image's ENV overridden by the manifest's env."""
    return {**IMAGE_ENV, **{e["name"]: e["value"] for e in container.get("env", [])}}


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


@pytest.mark.parametrize(
    "path", KUBERNETES + REPOSITORY, ids=lambda p: p.parent.name + "/" + p.name
)
def test_kubernetes_manifests_validate_against_the_schema(path):
    kubernetes_validate.validate(load(path), K8S_VERSION, strict=True)


@EACH_CONTAINER
def test_every_container_is_a_valid_kubernetes_container(where, container):
    # KServe's predictor and runtime containers are core/v1 Containers: check them as such.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}}
    kubernetes_validate.validate({**pod, "spec": {"containers": [container]}}, K8S_VERSION, True)


@EACH_CONTAINER
def test_probes_ports_and_threads_agree_with_the_server(where, container):
    env = env_of(container)
    served_port = int(env["LN2D_PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [served_port]
    probes = {k: container[k]["httpGet"] for k in container if k.endswith("Probe")}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["path"] == "/v2/health/live"
    for probe in probes.values():
        assert port_number(container, probe["port"]) == served_port
    # The server sizes its thread pools from the cgroup quota, i.e. the CPU limit: it must be
    # whole cores, and explicit thread settings, if any, must not exceed it.
    limits = container["resources"]["limits"]
    cores = int(limits["cpu"])
    assert container["resources"]["requests"]["cpu"] == limits["cpu"]
    for setting in ("LN2D_THREADS", "LN2D_DECODE_THREADS"):
        assert int(env.get(setting, 0)) <= cores


def test_deployment_drain_service_and_autoscaler_fit_together():
    kinds = by_kind(KUBERNETES)
    (deployment,), (service,), (hpa,) = (
        kinds["Deployment"],
        kinds["Service"],
        kinds["HorizontalPodAutoscaler"],
    )
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    drain = float(env_of(container)["LN2D_DRAIN_TIMEOUT_S"])
    assert drain == float(IMAGE_ENV["LN2D_DRAIN_TIMEOUT_S"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain

    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert port_number(container, service_port["targetPort"]) == int(IMAGE_ENV["LN2D_PORT"])
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"

    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "cpu" in container["resources"]["requests"]  # utilisation is relative to requests


def test_the_repository_deployment_serves_its_claim_read_only():
    kinds = by_kind(REPOSITORY)
    (deployment,), (service,), (claim,) = (
        kinds["Deployment"],
        kinds["Service"],
        kinds["PersistentVolumeClaim"],
    )
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["LN2D_MODEL_PATH"]]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]  # every replica mounts it
    assert env["LN2D_MODEL_CONTROL_MODE"] == "poll"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["metadata"]["name"] != "ln2d"  # both deployments can run side by side
    drain = float(env["LN2D_DRAIN_TIMEOUT_S"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain


def test_kserve_runtime_and_inference_services_refer_to_each_other():
    kinds = by_kind(KSERVE)
    (runtime,) = kinds["ServingRuntime"]
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (runtime_container,) = runtime["spec"]["containers"]
    # KServe's storage initializer puts the storageUri's files under /mnt/models.
    assert env_of(runtime_container)["LN2D_MODEL_PATH"].startswith("/mnt/models/")
    for service in kinds["InferenceService"]:
        assert service["apiVersion"] == "serving.kserve.io/v1beta1"
        predictor = service["spec"]["predictor"]
        assert predictor["minReplicas"] <= predictor["maxReplicas"]
        if "model" in predictor:
            model = predictor["model"]
            assert model["runtime"] == runtime["metadata"]["name"]
            assert model["modelFormat"]["name"] in formats
            assert model["protocolVersion"] == "v2"
            assert re.match(r"^[a-z0-9]+://", model["storageUri"])
        else:
            (container,) = predictor["containers"]
            assert container["name"] == "kserve-container"


@pytest.mark.slow
@EACH_CONTAINER
def test_probe_paths_answer_on_a_real_server_with_the_manifest_environment(
    where, container, digits_onnx, tmp_path
):
    served = digits_onnx
    if "LN2D_MODEL_CONTROL_MODE" in env_of(container):  # a repository, made as a user would
        served = tmp_path / "repo"
        made = run_cli("triton-repo", str(digits_onnx), str(served))
        assert made.returncode == 0, made.stderr
    env = {**env_of(container), "LN2D_MODEL_PATH": str(served)}
    env.update(LN2D_HOST="127.0.0.1", LN2D_PORT="0")
    server = ServerProcess(None, env=env)
    try:
        for probe in ("readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            assert httpx.get(server.url + path).status_code == 200, (probe, path)
    finally:
        assert server.stop() == 0
