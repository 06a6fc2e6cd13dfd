"""The server's data plane, in the spirit of KServe's: the state every route works on and the
request helpers they share. The routes (``routes_*``) depend on this module; the app factory
(``app``) wires it to them, and nothing here imports either.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from ln2d.cpu_quota import available_cpus
from ln2d.serve import images
from ln2d.serve.batcher import Admission, Result
from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import Metrics
from ln2d.serve.model import ModelInfo
from ln2d.serve.registry import LoadFailed, Registry, ServedVersion
from ln2d.serve.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ln2d.serve.tracing import Tracer

log = logging.getLogger("ln2d.serve")


class DataPlane:
    """Everything a request handler needs, created once per app: the models (a registry), the
    decoder threads, the server's readiness and the metrics."""

    def __init__(
        self, settings: Settings, registry: Registry, metrics: Metrics, tracer: Tracer | None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.tracer = tracer
        self.decoders = ThreadPoolExecutor(
            settings.decode_threads or available_cpus(), thread_name_prefix="ln2d-decode"
        )
        self.not_ready = "loading models"  # None once ready

    @property
    def ready(self) -> bool:
        return self.not_ready is None

    def set_not_ready(self, reason: str | None) -> None:
        self.not_ready = reason
        self.metrics.ready.set(self.ready)

    def readiness(self, **fields: object) -> JSONResponse:
        """The v2 readiness answer. The protocol says not-ready is a 4xx; 400 is Triton's."""
        if self.ready:
            return JSONResponse({**fields, "ready": True})
        return JSONResponse(
            {**fields, "ready": False, "error": f"not ready: {self.not_ready}"}, 400
        )

    def check_ready(self) -> None:
        if not self.ready:
            self.metrics.reject("not_ready")
            raise ApiError(503, f"not ready: {self.not_ready}", {"Retry-After": "1"})

    def shed_reason(self, path: str) -> str | None:
        """Why an inference request to ``path`` is refused right now, if it is: the server
        is not ready, or that model's queue is full (other models' queues do not matter)."""
        if not self.ready:
            self.metrics.reject("not_ready")
            return f"not ready: {self.not_ready}"
        served = self.registry.for_path(path)
        if served is not None and served.batcher.full:
            served.metrics.reject("queue_full")
            return (
                f"server busy: {served.batcher.max_queue} images queued for model "
                f"{served.name!r}; retry later"
            )
        return None

    async def load_model(self, name: str, parameters: dict) -> None:
        """The repository extension's load, for either protocol: explicit mode only, as in
        Triton; answers once the model is ready."""
        self._check_explicit()
        if parameters:
            raise ApiError(
                400,
                f"load parameters are not supported ({', '.join(sorted(parameters))}): ln2d "
                "loads a model only as its repository folder holds it",
            )
        if not self.registry.known(name):
            raise ApiError(404, f"no model {name!r} in the repository")
        try:
            await self.registry.load(name)
        except LoadFailed as failed:
            raise ApiError(400, f"failed to load {name!r}: {failed}") from None

    async def unload_model(self, name: str) -> None:
        self._check_explicit()
        await self.registry.unload(name)

    def _check_explicit(self) -> None:
        mode = self.settings.model_control_mode
        if mode != "explicit":
            raise ApiError(
                403,
                f"explicit model load / unload is not allowed with --model-control-mode {mode}",
            )

    @staticmethod
    def deadline(request: Request) -> float:
        """The request's deadline, set by the body guard when its head arrived."""
        return request.state.deadline

    @staticmethod
    def serving(request: Request, served: ServedVersion) -> None:
        """Name the model version in the request's access log line, metrics and trace."""
        request.state.served = (served.name, str(served.version))

    @staticmethod
    def span(request: Request) -> Span | None:
        """The request's trace span (set by the access log middleware), when tracing."""
        return request.scope["state"].get("span")

    def encoded(self, span: Span | None, started: float) -> None:
        """Record the answer's encoding, from ``started`` to now, when tracing."""
        if self.tracer is not None:
            self.tracer.stage(span, "encode", started, time.monotonic())

    async def classify(
        self,
        served: ServedVersion,
        admission: Admission,
        blobs: Sequence[bytes],
        deadline: float,
        span: Span | None = None,
    ) -> tuple[float, list[Result]]:
        """Decode images and infer: (seconds decoding took, one result per image). One image
        on an otherwise idle model is decoded and run in one trip to its inference thread;
        otherwise the decoder threads decode every image at once and the batcher runs them."""
        batcher, info = served.batcher, served.info
        if len(blobs) == 1 and batcher.alone(admission):
            decode = functools.partial(self._decode_all, blobs, info)
            decode_s, results = await batcher.run_alone(admission, decode, deadline, span)
            decoded = results[0].started
        else:
            started = time.monotonic()
            samples = await self._decode_in_threads(blobs, info)
            decoded = time.monotonic()
            decode_s = decoded - started
            results = await batcher.infer(admission, samples, deadline, span)
        served.metrics.observe("decode", decode_s)
        if self.tracer is not None:
            self.tracer.stage(span, "decode", decoded - decode_s, decoded)
        return decode_s, results

    @staticmethod
    async def infer(
        served: ServedVersion,
        admission: Admission,
        samples: np.ndarray,
        deadline: float,
        span: Span | None = None,
    ) -> list[Result]:
        """Infer ready ``(N, C, H, W)`` samples: alone on an idle model, else batched."""
        batcher = served.batcher
        if batcher.alone(admission):
            _, results = await batcher.run_alone(admission, lambda: samples, deadline, span)
            return results
        return await batcher.infer(admission, samples, deadline, span)

    def _decode_all(self, blobs: Sequence[bytes], info: ModelInfo) -> np.ndarray:
        limit = self.settings.max_pixels
        return np.stack([images.decode(blob, info, limit) for blob in blobs])

    async def _decode_in_threads(self, blobs: Sequence[bytes], info: ModelInfo) -> np.ndarray:
        """Every image in its own decoder thread (Pillow releases the GIL), all at once."""
        loop = asyncio.get_running_loop()
        limit = self.settings.max_pixels
        jobs = [
            loop.run_in_executor(self.decoders, images.decode, blob, info, limit) for blob in blobs
        ]
        return np.stack(await asyncio.gather(*jobs))

    async def self_test(self) -> None:
        """Run every ready model version on one blank sample, as a health check that the
        process and its sessions still work. Raises ApiError (503) when not ready, or an
        error naming the version whose run failed or gave non-finite logits."""
        self.check_ready()
        for served in self.registry.ready_versions():
            with served:
                sample = np.zeros((1, *served.model.info.sample_shape), np.float32)
                logits = await asyncio.get_running_loop().run_in_executor(
                    None, served.model.run, sample
                )
            if not np.isfinite(logits).all():
                raise RuntimeError(f"{served.name} version {served.version}: non-finite logits")

    async def start(self) -> None:
        """Load the models the control mode loads at startup (each warmed up), then be ready."""
        started = time.monotonic()
        await self.registry.start()
        # Startup objects (the app, numpy, onnxruntime) never die: move them out of the
        # collector's sight, so that full collections under load stay short.
        gc.freeze()
        served = self.registry.ready_versions()
        single = self.registry.source.single
        if single is not None and not served:
            reason = self.registry.failure(single.name)
            self.set_not_ready(f"the model failed to load: {reason}")
            return
        self.set_not_ready(None)
        log.info(
            "ready in %.2f s: %s (batch sizes 1..%d warmed up)",
            time.monotonic() - started,
            ", ".join(f"{s.name!r} version {s.version} on {s.model.provider}" for s in served)
            or "no model loaded yet",
            self.settings.max_batch,
        )


def refuse_compressed(request: Request) -> None:
    """Bodies are taken as sent: the body limit counts the bytes on the wire, so inflating
    them here would let a small request grow past it."""
    if request.headers.get("content-encoding", "identity") != "identity":
        raise ApiError(415, "compressed request bodies are not accepted")
