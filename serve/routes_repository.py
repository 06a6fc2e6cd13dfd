"""The Open Inference Protocol's model repository extension, as Triton answers it, so that
tritonclient's ``get_model_repository_index``, ``load_model`` and ``unload_model`` work
unchanged. Loading and unloading are for ``--model-control-mode explicit`` only, as in
Triton: in ``none`` the repository is fixed at start, and in ``poll`` the folder decides."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ln2d.serve.dataplane import DataPlane
from ln2d.serve.errors import ApiError, documented

_CHANGE_ERRORS = documented(400, 401, 403, 404, 503)


def router(state: DataPlane) -> APIRouter:
    routes = APIRouter(tags=["v2 model repository"])
    registry = state.registry

    @routes.post(
        "/v2/repository/index",
        summary="Every model in the repository, per version, with its state and reason",
        responses=documented(400, 401),
    )
    async def index(request: Request) -> JSONResponse:
        body = await _json_body(request)
        return JSONResponse(registry.index(ready_only=body.get("ready") is True))

    @routes.post(
        "/v2/repository/models/{name}/load",
        summary="Load (or reload) model NAME as its folder is now; answers once it is ready",
        responses=_CHANGE_ERRORS,
    )
    async def load(name: str, request: Request) -> dict:
        parameters = (await _json_body(request)).get("parameters") or {}
        await state.load_model(name, parameters)
        return {}

    @routes.post(
        "/v2/repository/models/{name}/unload",
        summary="Stop serving model NAME: in-flight requests finish first",
        responses=_CHANGE_ERRORS,
    )
    async def unload(name: str, request: Request) -> dict:
        await _json_body(request)
        await state.unload_model(name)
        return {}

    return routes


async def _json_body(request: Request) -> dict:
    """The optional JSON object these calls take (tritonclient sends an empty index body)."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    return value
