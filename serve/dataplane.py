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

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from ln2d.cpu_quota import available_cpus
from ln2d.serve import images
from ln2d.serve.batcher import Admission, Batcher, Result
from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import Metrics
from ln2d.serve.model import Model
from ln2d.serve.settings import Settings

log = logging.getLogger("ln2d.serve")


class DataPlane:
    """Everything a request handler needs, created once per app: the model, the batcher,
    the decoder threads, readiness and admission."""

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

    @staticmethod
    def deadline(request: Request) -> float:
        """The request's deadline, set by the body guard when its head arrived."""
        return request.state.deadline

    async def classify(
        self, admission: Admission, blobs: Sequence[bytes], deadline: float
    ) -> tuple[float, list[Result]]:
        """Decode images and infer: (seconds decoding took, one result per image). One image
        on an otherwise idle server is decoded and run in one trip to the inference thread;
        otherwise the decoder threads decode every image at once and the batcher runs them."""
        if len(blobs) == 1 and self.batcher.alone(admission):
            decode = functools.partial(self._decode_all, blobs)
            decode_s, results = await self.batcher.run_alone(admission, decode, deadline)
        else:
            started = time.monotonic()
            samples = await self._decode_in_threads(blobs)
            decode_s = time.monotonic() - started
            results = await self.batcher.infer(admission, samples, deadline)
        self.metrics.observe("decode", decode_s)
        return decode_s, results

    async def infer(
        self, admission: Admission, samples: np.ndarray, deadline: float
    ) -> list[Result]:
        """Infer ready ``(N, C, H, W)`` samples: alone on an idle server, else batched."""
        if self.batcher.alone(admission):
            _, results = await self.batcher.run_alone(admission, lambda: samples, deadline)
            return results
        return await self.batcher.infer(admission, samples, deadline)

    def _decode_all(self, blobs: Sequence[bytes]) -> np.ndarray:
        limit = self.settings.max_pixels
        return np.stack([images.decode(blob, self.info, limit) for blob in blobs])

    async def _decode_in_threads(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Every image in its own decoder thread (Pillow releases the GIL), all at once."""
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
