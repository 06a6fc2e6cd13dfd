"""docker/kubernetes-ray/rayservice.yaml (KubeRay) and docker/ray/serve-config.yaml (Ray
Serve's config file): the RayService in KubeRay's shape with Kubernetes-valid pod templates,
its Serve application the config file's, and that application valid for Ray and for ln2d and
fitting the workers. tests/serve/test_ray_serve.py deploys the config file on a real cluster."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ln2d.serve.settings import Settings
from tests.helpers import ROOT

pytestmark = pytest.mark.integration

RAYSERVICE = ROOT / "docker" / "kubernetes-ray" / "rayservice.yaml"
SERVE_CONFIG = ROOT / "docker" / "ray" / "serve-config.yaml"
K8S_VERSION = "1.33.0"
SCALING_ARGS = {"replicas", "min_replicas", "max_replicas", "target_ongoing_requests",
                "upscale_delay_s", "downscale_delay_s"}  # fmt: skip

# KubeRay's RayService (ray.io/v1) as its API reference defines the fields this manifest
# uses: a Serve config as YAML text, and a RayCluster spec of a head group and worker groups,
# each with string-valued `ray start` parameters and a pod template.
_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_GROUP = {
    "type": "object",
    "required": ["rayStartParams", "template"],
    "properties": {"rayStartParams": _START_PARAMS, "template": {"type": "object"}},
}
RAYSERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "additionalProperties": False,
            "properties": {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {
                    "type": "object",
                    "required": ["headGroupSpec", "workerGroupSpecs"],
                    "additionalProperties": False,
                    "properties": {
                        "enableInTreeAutoscaling": {"type": "boolean"},
                        "headGroupSpec": _GROUP,
                        "workerGroupSpecs": {
                            "type": "array",
                            "items": {
                                **_GROUP,
                                "required": ["groupName", "rayStartParams", "template"],
                                "properties": {
                                    **_GROUP["properties"],
                                    "groupName": {"type": "string"},
                                    "replicas": {"type": "integer", "minimum": 0},
                                    "minReplicas": {"type": "integer", "minimum": 0},
                                    "maxReplicas": {"type": "integer", "minimum": 1},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def groups() -> list[dict]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def application() -> dict:
    (app,) = yaml.safe_load(SERVE_CONFIG.read_text())["applications"]
    return app


def test_the_rayservice_has_kuberays_shape():
    jsonschema.validate(rayservice(), RAYSERVICE_SCHEMA)


@pytest.mark.parametrize("group", groups(), ids=["head", "workers"])
def test_its_pod_templates_are_valid_kubernetes(group):
    pod_template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "ln2d-ray"},
        "template": group["template"],
    }
    kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
    (container,) = group["template"]["spec"]["containers"]
    assert container["image"] == "ln2d-serve:ray"
    # Ray's logical CPUs are the container's: what Serve reserves is what the pod has
    cpus = int(group["rayStartParams"]["num-cpus"])
    assert cpus == 0 or container["resources"]["limits"]["cpu"] == str(cpus)


def test_its_serve_application_is_the_config_files():
    deployed = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    assert deployed == yaml.safe_load(SERVE_CONFIG.read_text())


def test_the_config_is_valid_for_ray_and_for_ln2d_and_fits_the_workers():
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'ln2d[ray]'")
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load(SERVE_CONFIG.read_text()))
    app = application()
    assert app["import_path"] == "ln2d.serve.ray_serve:build"
    args = app["args"]
    settings = Settings(**{k: v for k, v in args.items() if k not in SCALING_ARGS})
    head, *workers = groups()
    assert head["rayStartParams"]["num-cpus"] == "0"  # replicas run on the workers only
    worker_cpus = sum(int(w["rayStartParams"]["num-cpus"]) * w["maxReplicas"] for w in workers)
    assert args["max_replicas"] * settings.threads <= worker_cpus


@pytest.mark.parametrize("group", groups(), ids=["head", "workers"])
def test_every_node_starts_ray_with_the_ingress_serve_ray_starts(group):
    """HAProxy in front, throughput-optimized, as ``ln2d serve-ray`` starts Ray: the same
    variables on every node (the replicas listen for HAProxy), its binary the image's."""
    from ln2d.serve.ray_supervisor import environment

    (container,) = group["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    expected = environment("haproxy")
    expected["RAY_SERVE_HAPROXY_BINARY_PATH"] = "/opt/venv/bin/ln2d-haproxy"  # the image's venv
    assert env == expected
