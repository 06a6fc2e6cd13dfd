"""The batcher with a real ONNX Runtime session: concurrent requests come back in batches with
the logits a direct run gives, and admission refuses past the queue's limit."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import onnxruntime as ort
import pytest

from ln2d.serve.batcher import Batcher
from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import Metrics
from tests.tiny_models import classifier


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(
        classifier().SerializeToString(), providers=["CPUExecutionProvider"]
    )


def _run(session):
    return lambda batch: session.run(None, {"input": batch})[0]


def test_concurrent_requests_are_batched_and_answered_exactly(session):
    metrics = Metrics()
    samples = np.random.default_rng(0).standard_normal((6, 1, 1, 8, 8)).astype(np.float32)

    async def main() -> list:
        batcher = Batcher(_run(session), max_batch=4, max_delay_s=0.05, max_queue=16,
                          metrics=metrics)  # fmt: skip
        batcher.start()

        async def one(sample):
            with batcher.admit(1) as admission:
                return await batcher.infer(admission, sample, time.monotonic() + 5)

        try:
            return await asyncio.gather(*(one(s) for s in samples))
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    direct = _run(session)(samples[:, 0])
    for (result,), expected in zip(answers, direct, strict=True):
        np.testing.assert_allclose(result.logits, expected, rtol=1e-6)
    sizes = metrics.batch_size.collect()[0].samples
    count = next(s.value for s in sizes if s.name.endswith("_count"))
    assert count < len(samples)  # fewer model runs than requests: they were batched


def test_admission_refuses_past_the_queue_limit(session):
    async def main() -> None:
        batcher = Batcher(_run(session), 4, 0.0, max_queue=3, metrics=Metrics())
        with batcher.admit(2), pytest.raises(ApiError) as caught, batcher.admit(2):
            pass
        assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
        with batcher.admit(3):  # the first admission was released: room again
            assert batcher.full

    asyncio.run(main())
