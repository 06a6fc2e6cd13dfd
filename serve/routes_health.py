"""Health, server metadata and metrics: the endpoints that never need a token."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ln2d.serve.dataplane import DataPlane
from ln2d.serve.errors import documented


def router(state: DataPlane) -> APIRouter:
    routes = APIRouter(tags=["health"])

    @routes.get("/v2/health/live", summary="200 while the process serves HTTP")
    async def live() -> dict:
        return {"live": True}

    @routes.get(
        "/v2/health/ready",
        summary="200 once warmed up, 400 while warming or draining",
        responses=documented(400),
    )
    async def ready() -> JSONResponse:
        return state.readiness()

    @routes.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return routes
