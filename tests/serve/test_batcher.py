"""The batcher with a real ONNX Runtime session: concurrent requests come back in batches with
the logits a direct run gives, and admission refuses past the queue's limit."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest

from ln2d.serve.batcher import Batcher
from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import Metrics
from tests.serve.prometheus import sample
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
                          metrics=metrics.for_model("m", 1))  # fmt: skip
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
    count = sample(metrics.exposition().decode(), "ln2d_batch_size_count", model="m")
    assert count < len(samples)  # fewer model runs than requests: they were batched


def test_admission_refuses_past_the_queue_limit(session):
    async def main() -> None:
        batcher = Batcher(_run(session), 4, 0.0, max_queue=3, metrics=Metrics().for_model("m", 1))
        with batcher.admit(2), pytest.raises(ApiError) as caught, batcher.admit(2):
            pass
        assert caught.value.status == 503 and caught.value.headers == {"Retry-After": "1"}
        with batcher.admit(3):  # the first admission was released: room again
            assert batcher.full

    asyncio.run(main())


def test_a_request_alone_is_prepared_and_run_in_one_trip_and_others_still_batch(session):
    """Alone, a request runs without the queue, on the inference thread; a second admitted
    request makes neither of them alone; the answers equal a direct run either way."""
    samples = np.random.default_rng(1).standard_normal((3, 1, 1, 8, 8)).astype(np.float32)
    threads: list[str] = []

    def prepare() -> np.ndarray:
        threads.append(threading.current_thread().name)
        return samples[0]

    async def main() -> tuple:
        batcher = Batcher(_run(session), 4, 0.05, max_queue=8, metrics=Metrics().for_model("m", 1))
        batcher.start()
        try:
            with batcher.admit(1) as alone:
                assert batcher.alone(alone)
                prepare_s, results = await batcher.run_alone(alone, prepare, time.monotonic() + 5)
            with batcher.admit(1) as first, batcher.admit(1) as second:
                assert not batcher.alone(first) and not batcher.alone(second)
                batched = await asyncio.gather(
                    batcher.infer(first, samples[1], time.monotonic() + 5),
                    batcher.infer(second, samples[2], time.monotonic() + 5),
                )
            return prepare_s, results, batched
        finally:
            await batcher.stop()

    prepare_s, results, batched = asyncio.run(main())
    assert threads == ["ln2d-inference_0"] and prepare_s >= 0
    direct = _run(session)(samples[:, 0])
    np.testing.assert_allclose(results[0].logits, direct[0], rtol=1e-6)
    assert results[0].queue_s == 0
    for (result,), expected in zip(batched, direct[1:], strict=True):
        np.testing.assert_allclose(result.logits, expected, rtol=1e-6)


def test_run_alone_keeps_the_deadline_and_reports_a_failed_model_as_500(session):
    def failing(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("broken model")

    async def main(run, deadline_s: float) -> ApiError:
        batcher = Batcher(run, 4, 0.0, max_queue=8, metrics=Metrics().for_model("m", 1))
        batcher.start()
        slow = lambda: time.sleep(0.2) or np.zeros((1, 1, 8, 8), np.float32)  # noqa: E731
        try:
            with batcher.admit(1) as admission, pytest.raises(ApiError) as caught:
                await batcher.run_alone(admission, slow, time.monotonic() + deadline_s)
            return caught.value
        finally:
            await batcher.stop()

    assert asyncio.run(main(_run(session), 0.05)).status == 504
    assert asyncio.run(main(failing, 5)).status == 500


def test_a_request_of_more_images_than_max_batch_is_never_one_run(session):
    """Alone on the server, a request of 10 images with max_batch 4 is not run at once: the
    model never sees more than max_batch (a --cuda-graphs model cannot), and the answers are
    a direct run's."""
    seen: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        seen.append(len(batch))
        return _run(session)(batch)

    samples = np.random.default_rng(2).standard_normal((10, 1, 8, 8)).astype(np.float32)

    async def main() -> list:
        batcher = Batcher(run, 4, 0.0, max_queue=16, metrics=Metrics().for_model("m", 1))
        batcher.start()
        try:
            with batcher.admit(len(samples)) as admission:
                assert not batcher.alone(admission)
                return await batcher.infer(admission, samples, time.monotonic() + 5)
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    assert max(seen) <= 4 and sum(seen) == len(samples)
    direct = _run(session)(samples)
    for result, expected in zip(answers, direct, strict=True):
        np.testing.assert_allclose(result.logits, expected, rtol=1e-6)
