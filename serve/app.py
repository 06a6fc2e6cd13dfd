"""The FastAPI application: wiring of state, routes, errors and middleware.

``create_app`` opens a single model file at once, so that a bad file or a missing CUDA
provider fails before the port is bound; a repository's models load after startup (a model
that fails is reported on the index and the others serve). Warm-up runs after startup, and
readiness says when it is done.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ln2d.errors import UserError
from ln2d.serve import page, routes_health, routes_repository, routes_v1, routes_v2
from ln2d.serve.dataplane import DataPlane
from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import Metrics
from ln2d.serve.middleware import BodyGuard, LoadShedding, RequestLog
from ln2d.serve.model import Model, ModelLoadError
from ln2d.serve.registry import Registry, Source, model_threads
from ln2d.serve.settings import Settings

if TYPE_CHECKING:
    from ln2d.serve.tracing import Tracer

log = logging.getLogger("ln2d.serve")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer


def create_app(
    settings: Settings,
    model: Model | None = None,
    tracer: Tracer | None = None,
    warm_before_serving: bool = False,
) -> FastAPI:
    """The app for ``settings.model_path``: a repository folder, or a model file (opened here
    unless ``model`` is that file, already open). Raises ModelLoadError for a file that cannot
    be served. ``tracer`` replaces the one the settings ask for (tests record spans in
    memory). Under uvicorn the port is bound while the models warm up, and readiness says
    when they are done; ``warm_before_serving`` makes startup itself wait for them instead,
    for hosts whose readiness is the app's startup (a Ray Serve replica)."""
    metrics = Metrics()
    tracer = tracer or _tracer(settings)
    registry = _registry(settings, metrics, model, tracer)
    state = DataPlane(settings, registry, metrics, tracer)

    grpc_service = _grpc_service() if settings.grpc_port is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grpc_server = await grpc_service.start(state) if grpc_service else None
        starting = asyncio.create_task(state.start())
        if warm_before_serving:
            await asyncio.shield(starting)
        yield
        state.set_not_ready("shutting down")
        if grpc_server is not None:  # its in-flight calls finish within the drain timeout
            await grpc_server.stop(settings.drain_timeout_s)
        starting.cancel()
        await state.registry.stop()
        state.decoders.shutdown(wait=False, cancel_futures=True)
        if tracer is not None:  # the last spans reach the collector
            await asyncio.to_thread(tracer.shutdown)

    app = FastAPI(
        title="ln2d inference server",
        version=package_version("ln2d"),
        description="Image classification with a fused LayerNorm2d ONNX model: `/v1/classify` "
        "for images, the Open Inference Protocol (KServe v2) under `/v2`.",
        lifespan=lifespan,
    )
    app.state.ln2d = state
    _add_error_handlers(app)
    # Without a token there is nothing to check, and a dependency costs time on every request.
    auth = [Depends(_bearer(settings))] if settings.token else []
    # Routes are matched in order: the busiest first.
    app.include_router(routes_v1.router(state), dependencies=auth)
    app.include_router(routes_v2.router(state), dependencies=auth)
    app.include_router(routes_repository.router(state), dependencies=auth)
    app.include_router(routes_health.router(state))
    page.mount(app)
    # Added last = outermost: the log sees every answer, including 413s and CORS refusals.
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Inference-Header-Content-Length"],
            expose_headers=["X-Request-ID", "Inference-Header-Content-Length"],
        )
    app.add_middleware(BodyGuard, limit=settings.max_body_bytes, timeout_s=settings.timeout_s)
    app.add_middleware(LoadShedding, busy=state.shed_reason)
    app.add_middleware(
        RequestLog, metrics=state.metrics, enabled=settings.access_log, tracer=tracer
    )
    return app


def _registry(
    settings: Settings, metrics: Metrics, model: Model | None, tracer: Tracer | None
) -> Registry:
    path = settings.model_path
    if path.is_dir():
        return Registry(settings, metrics, Source.repository(path), tracer=tracer)
    if settings.model_control_mode != "none":
        raise ModelLoadError(
            f"--model-control-mode {settings.model_control_mode} needs a model repository "
            f"folder; {path} is one model file"
        )
    if model is None:
        threads = model_threads(settings, max_models=1)
        model = Model(
            path,
            settings.provider,
            settings.cpu_fallback,
            threads,
            static_batches=settings.static_batches,
        )
    return Registry(settings, metrics, Source.file(path, model.info.name), model, tracer)


def tracing_wanted(settings: Settings) -> bool:
    """The setting, or OpenTelemetry's own variables (unless OTEL_SDK_DISABLED)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    variables = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return settings.otlp_endpoint is not None or any(os.environ.get(v) for v in variables)


def _tracer(settings: Settings) -> Tracer | None:
    if not tracing_wanted(settings):
        return None  # and OpenTelemetry is never imported
    try:
        from ln2d.serve import tracing
    except ImportError as missing:
        raise UserError(
            f"tracing needs the tracing extra ({missing.name} is not installed): "
            "pip install 'ln2d[serve,tracing]'"
        ) from None
    return tracing.from_settings(settings.otlp_endpoint)


def _grpc_service():
    try:
        from ln2d.serve import grpc_service
    except ImportError as missing:
        raise UserError(
            f"--grpc-port needs the grpc extra ({missing.name} is not installed): "
            "pip install 'ln2d[serve,grpc]'"
        ) from None
    return grpc_service


def _bearer(settings: Settings):  # async: a sync dependency costs a thread hop per request
    assert settings.token is not None
    expected = settings.token.get_secret_value().encode()

    async def require_token(request: Request) -> None:
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

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        # Nobody reads this answer: it records the request as nginx's "client closed
        # request" in the metrics and the access log. A client leaving is not a server error.
        log.info("client closed the connection during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

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
