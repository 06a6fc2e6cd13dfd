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
from ln2d.serve.registry import LoadFailed

_CHANGE_ERRORS = documented(400, 401, 403, 404, 503)


def router(state: DataPlane) -> APIRouter:
    routes = APIRouter(tags=["v2 model repository"])
    registry, settings = state.registry, state.settings

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
        _check_explicit()
        parameters = (await _json_body(request)).get("parameters") or {}
        if parameters:
            raise ApiError(
                400,
                f"load parameters are not supported ({', '.join(sorted(parameters))}): ln2d "
                "loads a model only as its repository folder holds it",
            )
        if not registry.known(name):
            raise ApiError(404, f"no model {name!r} in the repository")
        try:
            await registry.load(name)
        except LoadFailed as failed:
            raise ApiError(400, f"failed to load {name!r}: {failed}") from None
        return {}

    @routes.post(
        "/v2/repository/models/{name}/unload",
        summary="Stop serving model NAME: in-flight requests finish first",
        responses=_CHANGE_ERRORS,
    )
    async def unload(name: str, request: Request) -> dict:
        _check_explicit()
        await _json_body(request)
        await registry.unload(name)
        return {}

    def _check_explicit() -> None:
        mode = settings.model_control_mode
        if mode != "explicit":
            raise ApiError(
                403,
                f"explicit model load / unload is not allowed with --model-control-mode {mode}",
            )

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
