"""ln2d on Ray Serve: the server's FastAPI app as the ingress of a deployment whose replicas
Ray places on a cluster's nodes, scales and replaces.

Each replica is one ln2d app in its own Ray actor, as ``ln2d serve`` is one process: one ONNX
Runtime session per model, ln2d's own batcher, admission and metrics. Ray's proxy hands it
requests one by one, so ln2d's batcher forms the batches, as behind uvicorn; ``@serve.batch``
would batch the same requests a second time (docs/deployment.md, "Ray Serve"). A replica
counts as started only once its models are warmed up, and Ray's health check runs them.

    ln2d serve-ray MODEL --replicas 2        # a local Ray instance, or --address
    serve run docker/ray/serve-config.yaml   # Ray's own CLI: ``build`` is its import path

``ln2d serve-ray`` runs this module as its Ray driver (``python -m ln2d.serve.ray_serve``), in
a session of its own under ``ray_supervisor``, which takes the signals.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from ln2d.serve.app import create_app
from ln2d.serve.settings import Settings

APP = DEPLOYMENT = "ln2d"
HEALTH_CHECK_PERIOD_S = 2.0
INGRESS_START_S = 60.0


@dataclass(frozen=True)
class Scaling:
    """How many replicas: a fixed number, or autoscaling between ``minimum`` and ``maximum`` on
    each replica's ongoing requests (Ray's autoscaling policy)."""

    replicas: int = 1
    minimum: int | None = None
    maximum: int | None = None
    target_ongoing_requests: float = 8.0
    upscale_delay_s: float = 3.0
    downscale_delay_s: float = 30.0

    @property
    def autoscaling(self) -> bool:
        return self.minimum is not None

    def options(self) -> dict[str, Any]:
        if not self.autoscaling:
            return {"num_replicas": self.replicas}
        return {
            "autoscaling_config": {
                "min_replicas": self.minimum,
                "initial_replicas": self.minimum,
                "max_replicas": self.maximum,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
            }
        }


@serve.ingress()
class Replica:
    """One ln2d app. ``settings`` are Settings fields (JSON values: they travel to the node)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._app = create_app(Settings(**settings), warm_before_serving=True)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

    async def check_health(self) -> None:
        """Ray's health check: every loaded model runs, not just the process."""
        await self._app.state.ln2d.self_test()


def actor_options(settings: Settings) -> dict[str, Any]:
    """What Ray reserves for a replica: the CPUs its inference threads use (the replica's
    sessions are given exactly that many), and a GPU for the CUDA provider."""
    options: dict[str, Any] = {"num_cpus": settings.threads}
    if settings.provider == "cuda":
        options["num_gpus"] = 1
    return options


def settings_fields(settings: Settings) -> dict[str, Any]:
    """``settings`` as JSON values, the token in clear (they travel to Ray's nodes)."""
    fields = settings.model_dump(mode="json", exclude_none=True)
    if settings.token is not None:  # the dump masks a secret
        fields["token"] = settings.token.get_secret_value()
    return fields


def application(settings: Settings, scaling: Scaling) -> Application:
    """The deployment of ``settings``' model with ``scaling``, ready for ``serve.run``."""
    if not settings.threads:  # a replica must not size itself by the whole node
        settings = settings.model_copy(update={"threads": 1})
    fields = settings_fields(settings)
    deployment = serve.deployment(Replica).options(
        name=DEPLOYMENT,
        ray_actor_options=actor_options(settings),
        # Enough for a full batch waiting while another runs; beyond it Ray's router queues
        # and can send the request to another replica, where ln2d would refuse it with a 503.
        max_ongoing_requests=2 * settings.max_batch,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        graceful_shutdown_timeout_s=settings.drain_timeout_s,
        # ln2d's own JSON line per request (--access-log) carries the request id; Ray's would
        # be a second line for every request.
        logging_config={"enable_access_log": False},
        **scaling.options(),
    )
    return deployment.bind(fields)


def build(args: dict[str, Any]) -> Application:
    """The application builder that a Serve config's ``import_path`` names
    (``ln2d.serve.ray_serve:build``): ``args`` holds Settings fields, plus ``replicas`` or
    ``min_replicas``/``max_replicas`` and the other Scaling fields."""
    args = dict(args)
    minimum, maximum = args.pop("min_replicas", None), args.pop("max_replicas", None)
    scaling_fields = {
        name: args.pop(name)
        for name in ("replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s")
        if name in args
    }
    scaling = Scaling(minimum=minimum, maximum=maximum, **scaling_fields)
    return application(Settings(**args), scaling)


def start(settings: Settings, scaling: Scaling, address: str | None = None) -> str:
    """Connect to the cluster at ``address`` (None: RAY_ADDRESS, else a new local instance),
    start Serve's ingress at the settings' host and port on the head node, and deploy;
    returns once every replica has warmed up and the ingress answers ready, with the URL."""
    if not ray.is_initialized():
        # "local": a new instance; Ray's own default joins one already running on this machine.
        ray.init(address=address or os.environ.get("RAY_ADDRESS", "local"), log_to_driver=False)
    serve.start(
        proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port}
    )
    serve.run(application(settings, scaling), name=APP, route_prefix="/")
    url = f"http://{settings.host}:{settings.port}"
    _wait_until_ready(url)
    return url


def _wait_until_ready(url: str, timeout_s: float = INGRESS_START_S) -> None:
    """Until the ingress answers readiness: ``serve.run`` returns once the replicas run, and
    HAProxy may bind its port after that, once it hears of them."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:  # refused, reset, a timeout, an HTTP error status
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray's ingress at {url} was not ready {timeout_s:.0f} s after "
                               "the replicas were")  # fmt: skip
        time.sleep(0.1)


def stop() -> None:
    """Delete the application: Ray stops routing to its replicas, and each drains the requests
    it holds (up to ``drain_timeout_s``) before it exits."""
    serve.delete(APP)


def serve_until_signalled(
    settings: Settings, scaling: Scaling, address: str | None, ingress: str
) -> None:
    """Deploy, say where and through which ingress, then serve until SIGINT or SIGTERM, which
    drain and delete the application and stop the Ray instance this process started."""
    url = start(settings, scaling, address)
    # After ray.init, whose own handler would end the process with no drain.
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    print(f"ln2d serve-ray: serving at {url} through {ingress} (SIGINT or SIGTERM to stop)",
          file=sys.stderr, flush=True)  # fmt: skip
    stopping.wait()
    stop()
    ray.shutdown()


def payload(settings: Settings, scaling: Scaling, address: str | None, ingress: str) -> str:
    """The driver's arguments, as ``main`` reads them."""
    fields = settings_fields(settings)
    return json.dumps({"settings": fields, "scaling": asdict(scaling), "address": address,
                       "ingress": ingress})  # fmt: skip


def main() -> int:
    given = json.loads(sys.argv[1])
    settings, scaling = Settings(**given["settings"]), Scaling(**given["scaling"])
    try:
        serve_until_signalled(settings, scaling, given["address"], given["ingress"])
    except RuntimeError as error:  # Ray's deployment failures, and an ingress never ready
        print(f"ln2d serve-ray: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
