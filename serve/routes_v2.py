"""The Open Inference Protocol (KServe v2) endpoints: server and model metadata, model
readiness and inference, with the binary tensor data and classification extensions."""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import version as package_version

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from ln2d.serve import v2_codec
from ln2d.serve.dataplane import DataPlane, refuse_compressed
from ln2d.serve.errors import documented

# Parsing a JSON tensor this large would hold the event loop for milliseconds: use a thread.
INLINE_PARSE_BYTES = 64 * 1024


def router(state: DataPlane) -> APIRouter:
    routes = APIRouter(tags=["v2 (Open Inference Protocol)"])
    registry = state.registry
    single = registry.source.single
    # A single model file's name is the document's only valid one; a repository's may change.
    model_name = Path(json_schema_extra={"enum": [single.name]} if single else None)

    async def server_metadata() -> dict:
        return {
            "name": "ln2d",
            "version": package_version("ln2d"),
            "extensions": ["binary_tensor_data", "classification", "model_repository"],
        }

    async def model_metadata(name: str = model_name, version: str | None = None) -> dict:
        served = registry.resolve(name, version)
        info = served.info
        return {
            "name": info.name,
            "versions": registry.versions(info.name),
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor(info.input_name, [-1, *info.sample_shape])],
            "outputs": [_tensor(info.output_name, [-1, info.num_classes])],
            "parameters": {
                "provider": served.model.provider,
                "precision": info.precision,
                "labels": list(info.labels),
                "max_batch_size": state.settings.max_batch,
                **({"parity_record": served.replay.to_json()} if served.replay else {}),
            },
        }

    async def model_ready(name: str = model_name, version: str | None = None) -> JSONResponse:
        reason = registry.not_ready_reason(name, version)
        if reason is not None:
            return JSONResponse({"name": name, "ready": False, "error": reason}, 400)
        return state.readiness(name=name)

    async def infer(
        request: Request, name: str = model_name, version: str | None = None
    ) -> Response:
        served = registry.resolve(name, version)
        state.check_ready()
        deadline, span = state.deadline(request), state.span(request)
        with served:
            state.serving(request, served)
            refuse_compressed(request)
            body = await request.body()
            header_length = request.headers.get(v2_codec.HEADER_LENGTH)
            parse_args = (body, header_length, served.info, state.settings.max_images)
            if len(body) <= INLINE_PARSE_BYTES:
                parsed = v2_codec.parse_request(*parse_args)
            else:
                parsed = await asyncio.get_running_loop().run_in_executor(
                    state.decoders, v2_codec.parse_request, *parse_args
                )
            with served.batcher.admit(len(parsed.samples)) as admission:
                results = await state.infer(served, admission, parsed.samples, deadline, span)
        encoding = time.monotonic()
        logits = np.stack([result.logits for result in results])
        content, headers = v2_codec.build_response(parsed, logits, served.info, served.version)
        state.encoded(span, encoding)
        return Response(content, headers=headers)

    schema = v2_codec.request_schema(state.settings.max_images, registry.single_info)
    infer_body = _infer_body(schema)
    # Routes are matched in order: inference first.
    prefixes = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    for prefix in prefixes:
        routes.add_api_route(
            prefix + "/infer",
            infer,
            methods=["POST"],
            summary="Inference: JSON tensors or binary tensor data",
            responses={200: _INFER_ANSWER, **documented(400, 401, 404, 408, 413, 415, 503, 504)},
            response_model=None,
            openapi_extra=infer_body,
        )
    routes.add_api_route(
        "/v2", server_metadata, methods=["GET"], summary="Server metadata",
        responses=documented(401),
    )  # fmt: skip
    for prefix in prefixes:
        routes.add_api_route(
            prefix,
            model_metadata,
            methods=["GET"],
            summary="Model metadata",
            responses=documented(401, 404, 503),
        )
        routes.add_api_route(
            prefix + "/ready",
            model_ready,
            methods=["GET"],
            summary="Model readiness",
            responses=documented(400, 401, 404),
        )
    return routes


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_INFER_ANSWER = {
    "description": "the outputs: JSON, or with binary outputs a JSON header of "
    "Inference-Header-Content-Length bytes followed by the raw tensors",
    "content": {
        "application/json": {"schema": v2_codec.RESPONSE_SCHEMA},
        "application/octet-stream": _BINARY,
    },
}


def _infer_body(json_schema: dict) -> dict:
    return {
        "parameters": [
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 1},
                "description": "binary tensor data: the length of the JSON header that "
                "starts the body; the raw tensors follow it",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "application/octet-stream": _BINARY,
            },
        },
    }


def _tensor(name: str, shape: list[int]) -> dict:
    return {"name": name, "datatype": v2_codec.DATATYPE, "shape": shape}
