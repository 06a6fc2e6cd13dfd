"""The FastAPI application: wiring of state, routes, errors and middleware.

``create_app`` takes an already loaded model, so that a bad model file or a missing CUDA
provider fails before the port is bound; warm-up runs after startup, and readiness says so.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ln2d.serve import images
from ln2d.serve.batcher import Batcher
from ln2d.serve.cpu_quota import available_cpus
from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import Metrics
from ln2d.serve.middleware import BodyLimit, LoadShedding, RequestLog
from ln2d.serve.model import Model
from ln2d.serve.settings import Settings

log = logging.getLogger("ln2d.serve")


class ServerState:
    """Everything a request handler needs, created once per app."""

    def __init__(self, settings: Settings, model: Model) -> None:
        self.settings = settings
        self.model = model
        self.info = model.info
        self.metrics = Metrics()
        self.batcher = Batcher(
            model.run,
            settings.max_batch,
            settings.max_delay_ms / 1000,
            settings.max_queue,
            self.metrics,
        )
        self.decoders = ThreadPoolExecutor(
            settings.decode_threads or available_cpus(), thread_name_prefix="ln2d-decode"
        )
        self.not_ready = "warming up"  # None once ready

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
        reason = self.shed_reason()
        if reason is not None:
            raise ApiError(503, reason, {"Retry-After": "1"})

    def shed_reason(self) -> str | None:
        """Why inference requests are refused right now, if they are."""
        if not self.ready:
            self.metrics.rejections.labels("not_ready").inc()
            return f"not ready: {self.not_ready}"
        if self.batcher.full:
            self.metrics.rejections.labels("queue_full").inc()
            return f"server busy: {self.batcher.max_queue} images queued; retry later"
        return None

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.info.name or version not in (None, "1"):
            asked = f"{name!r}" + (f" version {version!r}" if version is not None else "")
            raise ApiError(
                404, f"unknown model {asked}; this server has {self.info.name!r} version '1'"
            )

    def deadline(self) -> float:
        return time.monotonic() + self.settings.timeout_s

    async def decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Decode images in the decoder threads (Pillow releases the GIL), all at once."""
        loop = asyncio.get_running_loop()
        limit = self.settings.max_pixels
        jobs = [
            loop.run_in_executor(self.decoders, images.decode, blob, self.info, limit)
            for blob in blobs
        ]
        return np.stack(await asyncio.gather(*jobs))

    async def warm_up(self) -> None:
        started = time.monotonic()
        sizes = list(range(1, self.settings.max_batch + 1))
        await asyncio.to_thread(self.model.warm_up, sizes)
        self.metrics.model_load_seconds.set(self.model.load_seconds + time.monotonic() - started)
        # Startup objects (the app, numpy, onnxruntime) never die: move them out of the
        # collector's sight, so that full collections under load stay short.
        gc.freeze()
        self.set_not_ready(None)
        log.info(
            "ready: model %r on %s, warmed up batch sizes 1..%d in %.2f s",
            self.info.name,
            self.model.provider,
            self.settings.max_batch,
            time.monotonic() - started,
        )


def refuse_compressed(request: Request) -> None:
    """Bodies are taken as sent: the body limit counts the bytes on the wire, so inflating
    them here would let a small request grow past it."""
    if request.headers.get("content-encoding", "identity") != "identity":
        raise ApiError(415, "compressed request bodies are not accepted")


def create_app(settings: Settings, model: Model) -> FastAPI:
    from ln2d.serve import api_v1, api_v2, health, page

    state = ServerState(settings, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        warming = asyncio.create_task(state.warm_up())
        yield
        state.set_not_ready("shutting down")
        warming.cancel()
        await state.batcher.stop()
        state.decoders.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="ln2d inference server",
        version=package_version("ln2d"),
        description="Image classification with a fused LayerNorm2d ONNX model: `/v1/classify` "
        "for images, the Open Inference Protocol (KServe v2) under `/v2`.",
        lifespan=lifespan,
    )
    app.state.ln2d = state
    _add_error_handlers(app)
    auth = [Depends(_bearer(settings))]
    app.include_router(health.router(state))
    page.mount(app)
    app.include_router(api_v1.router(state), dependencies=auth)
    app.include_router(api_v2.router(state), dependencies=auth)
    # Added last = outermost: the log sees every answer, including 413s and CORS refusals.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Inference-Header-Content-Length"],
            expose_headers=["X-Request-ID", "Inference-Header-Content-Length"],
        )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(LoadShedding, busy=state.shed_reason)
    app.add_middleware(RequestLog, metrics=state.metrics, enabled=settings.access_log)
    return app


def _bearer(settings: Settings):  # async: a sync dependency costs a thread hop per request
    expected = settings.token.get_secret_value().encode() if settings.token else None

    async def require_token(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
            raise ApiError(
                401, "missing or wrong bearer token", {"WWW-Authenticate": 'Bearer realm="ln2d"'}
            )

    return require_token


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": message}``, and no bad input is a 500."""

    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return answer(422, problems)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return answer(500, "internal server error")
