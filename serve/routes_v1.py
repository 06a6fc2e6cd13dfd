"""``POST /v1/classify`` (images in, top-k classes out, the default model) and
``/v1/models/{name}/classify``; ``GET /v1/model``, ``/v1/models/{name}`` and ``/v1/models``."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from ln2d.serve import images
from ln2d.serve.batcher import Result
from ln2d.serve.dataplane import DataPlane, refuse_compressed
from ln2d.serve.errors import ApiError, documented
from ln2d.serve.registry import ServedVersion, thread_budget
from ln2d.serve.settings import Settings


class Prediction(BaseModel):
    index: int
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str
    provider: str
    predictions: list[list[Prediction]]
    timings_ms: dict[str, float]


_BINARY = {"schema": {"type": "string", "format": "binary"}}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{media: _BINARY for media in sorted(images.MEDIA_TYPES)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                    "required": ["file"],
                }
            },
        },
    }
}


CLASSIFY_ERRORS = (400, 401, 404, 408, 413, 415, 422, 503, 504)


def router(state: DataPlane) -> APIRouter:
    routes = APIRouter(tags=["classify"])
    settings, registry = state.settings, state.registry
    top_k_query = Query(settings.top_k, ge=1, description="classes per image")
    classify_doc = {
        "response_model": None,
        "responses": {200: {"model": ClassifyResponse}, **documented(*CLASSIFY_ERRORS)},
        "openapi_extra": _BODY,
    }

    @routes.post(
        "/v1/classify",
        summary="Classify images with the default model: the raw body, or one or more "
        "multipart 'file' fields",
        **classify_doc,
    )
    async def classify_default(request: Request, top_k: int = top_k_query) -> JSONResponse:
        state.check_ready()
        return await _classify(request, registry.default(), top_k)

    @routes.post(
        "/v1/models/{name}/classify",
        summary="Classify images with the newest ready version of model NAME",
        **classify_doc,
    )
    async def classify_named(request: Request, name: str, top_k: int = top_k_query) -> JSONResponse:
        state.check_ready()
        return await _classify(request, registry.resolve(name), top_k)

    async def _classify(request: Request, served: ServedVersion, top_k: int) -> JSONResponse:
        arrived, deadline, span = time.monotonic(), state.deadline(request), state.span(request)
        info = served.info
        with served:
            state.serving(request, served)
            blobs = await _images(request, settings.max_images)
            with served.batcher.admit(len(blobs)) as admission:
                decode_s, results = await state.classify(served, admission, blobs, deadline, span)
        encoding = time.monotonic()
        k = min(top_k, info.num_classes)
        # Built of plain str, int, float and lists: FastAPI's generic encoder, which walks
        # it looking for models and dataclasses, would cost as much as the inference.
        answer = JSONResponse(
            {
                "model": info.name,
                "version": str(served.version),
                "provider": served.model.provider,
                "predictions": [_top(result.logits, info.labels, k) for result in results],
                "timings_ms": _timings(arrived, decode_s, results),
            }
        )
        state.encoded(span, encoding)
        return answer

    @routes.get(
        "/v1/model",
        summary="The default model: name, version, labels, input, provider, precision",
        responses=documented(401, 404),
    )
    async def default_model() -> dict:
        return _describe(registry.default(), settings)

    @routes.get(
        "/v1/models/{name}",
        summary="Model NAME's newest ready version: labels, input, provider, precision",
        responses=documented(401, 404, 503),
    )
    async def named_model(name: str) -> dict:
        return _describe(registry.resolve(name), settings)

    @routes.get(
        "/v1/models",
        summary="Every ready model version, and how threads and model slots are shared",
        responses=documented(401),
    )
    async def models() -> dict:
        return {
            "models": [_describe(served, settings) for served in registry.ready_versions()],
            "default_model": settings.default_model,
            "control_mode": settings.model_control_mode,
            "max_models": registry.max_models,
            "thread_budget": thread_budget(),
            "threads_per_model": registry.threads_per_model,
        }

    return routes


def _describe(served: ServedVersion, settings: Settings) -> dict:
    info = served.info
    return {
        "name": info.name,
        "version": str(served.version),
        "labels": list(info.labels),
        "input": {
            "channels": info.channels,
            "height": info.height,
            "width": info.width,
            "media_types": sorted(images.FORMATS.values()),
        },
        "provider": served.model.provider,
        "precision": info.precision,
        "threads": served.model.threads,
        "memory_bytes": served.memory_bytes,
        "load_seconds": round(served.load_seconds, 3),
        "max_queue": served.batcher.max_queue,
        "max_images": settings.max_images,
        "max_body_bytes": settings.max_body_bytes,
        "top_k": settings.top_k,
    }


async def _images(request: Request, max_images: int) -> list[bytes]:
    """The raw body as one image, or every multipart ``file`` field."""
    content_type = request.headers.get("content-type", "")
    refuse_compressed(request)
    if not content_type.startswith("multipart/form-data"):
        images.check_media_type(content_type)
        return [await request.body()]
    async with request.form(max_files=max_images, max_fields=max_images) as form:
        files = form.getlist("file")
        if not files or not all(isinstance(f, UploadFile) for f in files):
            raise ApiError(400, "multipart body needs one or more 'file' fields holding images")
        for upload in files:
            images.check_media_type(upload.content_type or "application/octet-stream")
        return [await upload.read() for upload in files]


def _top(logits: np.ndarray, labels: tuple[str, ...], k: int) -> list[dict]:
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    probabilities = shifted / shifted.sum()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"index": int(i), "label": labels[i], "score": float(probabilities[i])} for i in order]


def _timings(arrived: float, decode_s: float, results: list[Result]) -> dict[str, float]:
    return {
        "decode": round(decode_s * 1000, 3),
        "queue": round(max(r.queue_s for r in results) * 1000, 3),
        "inference": round(max(r.inference_s for r in results) * 1000, 3),
        "total": round((time.monotonic() - arrived) * 1000, 3),
    }
