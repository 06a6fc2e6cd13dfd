"""Dynamic batching with admission control, on the event loop; inference off it.

Requests from every endpoint put single samples in one queue. A loop takes up to ``max_batch``
of them, waiting at most ``max_delay`` after the oldest when the queue is short, and runs the
batch in one inference thread; while it runs, the next batch fills. Admission is counted in
images from the moment a request is accepted (before decoding), so an overloaded server refuses
work at the door, in microseconds, instead of queueing it behind a growing backlog.

A request that arrives alone has nothing to be batched with: ``run_alone`` prepares (decodes)
and runs it in one trip to the inference thread, so that an idle server costs no more hops than
a plain endpoint. Requests that arrive meanwhile queue behind it in that same thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ln2d.serve.errors import ApiError
from ln2d.serve.metrics import ModelMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ln2d.serve.tracing import Tracer

log = logging.getLogger("ln2d.serve")


@dataclass(frozen=True)
class Result:
    logits: np.ndarray  # (classes,)
    queue_s: float
    inference_s: float
    started: float  # time.monotonic() when its model run started


@dataclass(eq=False)
class Admission:
    """A request's reservation, from ``admit`` to its answer."""

    images: int
    unsubmitted: int


@dataclass(eq=False)
class _Item:
    sample: np.ndarray
    future: asyncio.Future[Result]
    enqueued: float
    span: Span | None  # the request's trace span, when tracing is on


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        metrics: ModelMetrics,
        tracer: Tracer | None = None,
        span_attributes: dict | None = None,
    ) -> None:
        """``tracer``: record each run as a ``batch`` span with ``span_attributes`` (the model
        version and provider), linked to its requests' spans, and their queue and inference."""
        self._run = run
        self._tracer = tracer
        self._span_attributes = span_attributes or {}
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._pending: deque[_Item] = deque()
        self._admitted = 0  # images accepted and not yet answered
        self._incoming = 0  # of those, images not yet submitted to infer (being decoded)
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ln2d-inference")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="ln2d-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(ApiError(503, "server is shutting down"))
        self._executor.shutdown(wait=True)

    @property
    def full(self) -> bool:
        return self._admitted >= self.max_queue

    @contextmanager
    def admit(self, images: int) -> Iterator[Admission]:
        """Reserve room for ``images`` until the request is answered; 503 when there is none."""
        if self._admitted + images > self.max_queue:
            self._metrics.reject("queue_full")
            raise ApiError(
                503,
                f"server busy: {self._admitted} images queued (limit {self.max_queue})",
                {"Retry-After": "1"},
                reason="queue_full",
            )
        admission = Admission(images, images)
        self._admitted += images
        self._incoming += images
        self._metrics.queue_depth.set(self._admitted)
        try:
            yield admission
        finally:
            self._admitted -= images
            self._incoming -= admission.unsubmitted
            self._metrics.queue_depth.set(self._admitted)

    async def infer(
        self, admission: Admission, samples: np.ndarray, deadline: float, span: Span | None = None
    ) -> list[Result]:
        """Logits for admitted ``(N, C, H, W)`` samples; 504 if they are not done by ``deadline``
        (``time.monotonic()`` seconds). ``span``: the request's, when tracing."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        items = [_Item(sample, loop.create_future(), now, span) for sample in samples]
        self._pending.extend(items)
        admission.unsubmitted -= len(items)
        self._incoming -= len(items)
        self._arrived.set()
        if len(self._pending) >= self.max_batch or not self._incoming:
            self._full.set()
        futures = [item.future for item in items]
        waiting = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
        try:
            done = await asyncio.wait_for(waiting, max(0.0, deadline - now))
        except asyncio.TimeoutError:
            raise self._past_deadline() from None
        return [done] if len(futures) == 1 else done

    def _past_deadline(self) -> ApiError:
        self._metrics.reject("deadline")
        return ApiError(504, "deadline exceeded while waiting for inference")

    def alone(self, admission: Admission) -> bool:
        """Whether this request is the only one admitted, and fits one run: there is nothing
        to batch it with. A request of more than max_batch images goes through the queue,
        which splits it: the model never runs a batch larger than it was warmed up for."""
        return self._admitted == admission.images <= self.max_batch

    async def run_alone(
        self,
        admission: Admission,
        prepare: Callable[[], np.ndarray],
        deadline: float,
        span: Span | None = None,
    ) -> tuple[float, list[Result]]:
        """Seconds ``prepare`` took and the results, for a request that ``alone`` admits:
        ``prepare()`` (decoding) and inference run in one trip to the inference thread.
        504 if they are not done by ``deadline``."""
        self._incoming -= admission.unsubmitted  # no batch should wait for these
        admission.unsubmitted = 0
        job = asyncio.get_running_loop().run_in_executor(
            self._executor, self._prepare_and_run, prepare
        )
        try:
            prepare_s, logits, started, inference_s = await asyncio.wait_for(
                job, max(0.0, deadline - time.monotonic())
            )
        except asyncio.TimeoutError:
            raise self._past_deadline() from None
        self._metrics.batch_size.observe(len(logits))
        self._metrics.observe("inference", inference_s)
        self._metrics.observe("queue", 0.0)
        if self._tracer is not None:
            self._trace([(span, started)] * len(logits), started, started + inference_s)
        return prepare_s, [Result(row, 0.0, inference_s, started) for row in logits]

    def _prepare_and_run(
        self, prepare: Callable[[], np.ndarray]
    ) -> tuple[float, np.ndarray, float, float]:
        """Seconds preparing took, the logits, when the run started, and its seconds."""
        started = time.monotonic()
        samples = prepare()  # its ApiError (bad input) reaches the client as it is
        prepared = time.monotonic()
        logits = self._run_logged(samples)
        return prepared - started, logits, prepared, time.monotonic() - prepared

    def _run_logged(self, samples: np.ndarray) -> np.ndarray:
        """The model on a batch, in the inference thread; a failure is logged and is a 500."""
        try:
            return self._run(samples)
        except Exception:
            log.exception("inference failed on a batch of %d", len(samples))
            raise ApiError(500, "inference failed") from None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            await self._fill_window()
            batch = self._take()
            if batch:
                await self._run_batch(loop, batch)

    async def _fill_window(self) -> None:
        """While the queue is short and admitted images are still being decoded, wait until
        they arrive, the queue is full, or the oldest has waited max_delay. Waiting for
        requests that nobody has sent would only add latency."""
        wait = self._pending[0].enqueued + self.max_delay_s - time.monotonic()
        if len(self._pending) < self.max_batch and self._incoming and wait > 0:
            self._full.clear()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._full.wait(), wait)

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            if not item.future.done():  # a request past its deadline has cancelled it
                batch.append(item)
        return batch

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        started = time.monotonic()
        stacked = np.stack([item.sample for item in batch])
        try:
            logits = await loop.run_in_executor(self._executor, self._run_logged, stacked)
        except ApiError as failed:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failed)
            return
        inference_s = time.monotonic() - started
        self._metrics.batch_size.observe(len(batch))
        self._metrics.observe("inference", inference_s)
        for item, row in zip(batch, logits, strict=True):
            self._metrics.observe("queue", started - item.enqueued)
            if not item.future.done():
                result = Result(row, started - item.enqueued, inference_s, started)
                item.future.set_result(result)
        if self._tracer is not None:
            waits = [(item.span, item.enqueued) for item in batch]
            self._trace(waits, started, started + inference_s)

    def _trace(self, waits: list[tuple[Span | None, float]], started: float, ended: float) -> None:
        """The ``batch`` span, linked to each request's span; each request's queue wait and
        inference. ``waits``: each request's span and when it was queued."""
        tracer = self._tracer
        attributes = {**self._span_attributes, "ln2d.batch_size": len(waits)}
        requests = dict(reversed(waits))  # a request of several images: once, its first wait
        for span, enqueued in requests.items():
            if enqueued < started:
                tracer.stage(span, "queue", enqueued, started)
            tracer.stage(span, "inference", started, ended, **attributes)
        tracer.batch(list(requests), started, ended, **attributes)
