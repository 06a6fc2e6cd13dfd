"""Prometheus metrics, in a registry per app (so two servers in one process do not collide).

Everything a model does carries ``model`` and ``version`` labels: ``ModelMetrics`` is one
version's view, with its label values bound once. Requests that reach no model (health,
metrics, a 404) have empty ones.
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: from sub-millisecond inference to the request deadline.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MODEL = ["model", "version"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ln2d_requests",
            "HTTP requests by route, status and model",
            ["endpoint", "status", *MODEL],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "ln2d_stage_seconds",
            "Latency by stage: decode, queue (waiting for a batch), inference, total",
            ["stage", *MODEL],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "ln2d_batch_size", "Images per model run", MODEL, buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "ln2d_queue_depth", "Images admitted, not yet run", MODEL, registry=r
        )
        self.in_flight = Gauge("ln2d_in_flight_requests", "HTTP requests being served", registry=r)
        self.rejections = Counter(
            "ln2d_rejections", "Requests refused by reason", ["reason", *MODEL], registry=r
        )
        self.model_load_seconds = Gauge(
            "ln2d_model_load_seconds", "Time to load and warm up a model version", MODEL, registry=r
        )
        self.model_memory_bytes = Gauge(
            "ln2d_model_memory_bytes",
            "Resident memory a model version added when it loaded",
            MODEL,
            registry=r,
        )
        self.model_ready = Gauge(
            "ln2d_model_ready", "1 while a model version takes traffic", MODEL, registry=r
        )
        self.ready = Gauge("ln2d_ready", "1 when the server accepts inference", registry=r)
        self.parity_record_ratio = Gauge(
            "ln2d_parity_record_ratio",
            "A model version's parity record replayed on this machine at load: the error "
            "measured over the tolerance it was made with (above 1: drifted)",
            MODEL,
            registry=r,
        )

    def for_model(self, name: str, version: int) -> ModelMetrics:
        return ModelMetrics(self, name, str(version))

    def observe(self, stage: str, seconds: float, model: str = "", version: str = "") -> None:
        self._stage(stage, model, version).observe(seconds)

    def count_request(self, endpoint: str, status: int, model: str = "", version: str = "") -> None:
        self._requests(endpoint, status, model, version).inc()

    def reject(self, reason: str, model: str = "", version: str = "") -> None:
        self.rejections.labels(reason, model, version).inc()

    # labels() looks a child up under a lock on every call; these stay the same few objects.
    @functools.cache  # noqa: B019 (one Metrics per app, alive as long as the app)
    def _stage(self, stage: str, model: str, version: str) -> Histogram:
        return self.stage_seconds.labels(stage, model, version)

    @functools.cache  # noqa: B019
    def _requests(self, endpoint: str, status: int, model: str, version: str) -> Counter:
        return self.requests.labels(endpoint, str(status), model, version)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """One model version's metrics, its labels bound."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self.metrics, self.model, self.version = metrics, model, version
        labels = (model, version)
        self.batch_size = metrics.batch_size.labels(*labels)
        self.queue_depth = metrics.queue_depth.labels(*labels)
        self.load_seconds = metrics.model_load_seconds.labels(*labels)
        self.memory_bytes = metrics.model_memory_bytes.labels(*labels)
        self.ready = metrics.model_ready.labels(*labels)

    def observe(self, stage: str, seconds: float) -> None:
        self.metrics._stage(stage, self.model, self.version).observe(seconds)

    def reject(self, reason: str) -> None:
        self.metrics.reject(reason, self.model, self.version)
