"""Prometheus metrics, in a registry per app (so two servers in one process do not collide)."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from sub-millisecond inference to the request deadline.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ln2d_requests", "HTTP requests by route and status", ["endpoint", "status"], registry=r
        )
        self.stage_seconds = Histogram(
            "ln2d_stage_seconds",
            "Latency by stage: decode, queue (waiting for a batch), inference, total",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ln2d_batch_size", "Images per model run", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("ln2d_queue_depth", "Images admitted, not yet run", registry=r)
        self.in_flight = Gauge("ln2d_in_flight_requests", "HTTP requests being served", registry=r)
        self.rejections = Counter(
            "ln2d_rejections", "Requests refused by reason", ["reason"], registry=r
        )
        self.model_load_seconds = Gauge(
            "ln2d_model_load_seconds", "Time to load and warm up the model", registry=r
        )
        self.ready = Gauge("ln2d_ready", "1 when the server accepts inference", registry=r)

    def observe(self, stage: str, seconds: float) -> None:
        self._stage(stage).observe(seconds)

    def count_request(self, endpoint: str, status: int) -> None:
        self._requests(endpoint, status).inc()

    # labels() looks a child up under a lock on every call; these stay the same few objects.
    @functools.cache  # noqa: B019 (one Metrics per app, alive as long as the app)
    def _stage(self, stage: str) -> Histogram:
        return self.stage_seconds.labels(stage)

    @functools.cache  # noqa: B019
    def _requests(self, endpoint: str, status: int) -> Counter:
        return self.requests.labels(endpoint, str(status))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
