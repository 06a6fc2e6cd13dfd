"""A lean closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending one
pre-encoded request after the previous answer, recording status and latency per request.

It parses only the status line and Content-Length, so that on a 2-core machine the client takes
a few percent of a core at 1,000 req/s, and it keeps latencies per status code, which ``wrk``
does not (an overload run must tell fast 503s from slow 200s).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    seconds: float
    statuses: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # time.perf_counter() at each send
    bodies: list[bytes] | None = None  # each answer's body, when asked to keep them
    failures: int = 0  # connections refused or reset

    def summary(self, status: int | None = None) -> dict[str, float]:
        """Count, rate and latency percentiles (ms), for all answers or one status code."""
        latencies = np.asarray(self.latencies)
        if status is not None:
            latencies = latencies[np.asarray(self.statuses) == status]
        if latencies.size == 0:
            return {"count": 0, "per_s": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan")}
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        return {
            "count": int(latencies.size),
            "per_s": latencies.size / self.seconds,
            "p50_ms": float(p50),
            "p99_ms": float(p99),
        }

    def status_counts(self) -> dict[int, int]:
        codes, counts = np.unique(np.asarray(self.statuses, dtype=int), return_counts=True)
        return {int(c): int(n) for c, n in zip(codes, counts, strict=True)}


def http_request(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Client(asyncio.Protocol):
    """One connection; ``exchange`` sends the request and resolves with the status code, the
    Retry-After header's seconds (0 without one) and the body."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, float, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None or self.answer.done():
            return
        head = bytes(self.buffer[:end]).lower()
        length = int(header(head, b"content-length") or 0)
        if len(self.buffer) >= end + 4 + length:
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            retry_after = float(header(head, b"retry-after") or 0)
            self.answer.set_result((int(head[9:12]), retry_after, body))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("connection closed"))

    async def exchange(self, request: bytes) -> tuple[int, float, bytes]:
        self.answer = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return await self.answer


def header(head: bytes, name: bytes) -> bytes | None:
    """A header's value from a lower-cased response head (status line and headers, without the
    blank line that ends it); None when absent."""
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip() == name:
            return value.strip()
    return None


async def _worker(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    total: int,
    result: LoadResult,
    honour_retry_after: bool,
) -> None:
    loop = asyncio.get_running_loop()
    client: _Client | None = None
    while time.perf_counter() < stop_at and len(result.statuses) < total:
        if client is None or client.transport is None or client.transport.is_closing():
            try:
                _, client = await loop.create_connection(_Client, host, port)
            except OSError:
                result.failures += 1
                await asyncio.sleep(0.01)
                continue
        started = time.perf_counter()
        try:
            status, retry_after, body = await client.exchange(request)
        except ConnectionError:
            result.failures += 1
            client = None
            continue
        result.latencies.append(time.perf_counter() - started)
        result.starts.append(started)
        result.statuses.append(status)
        if result.bodies is not None:
            result.bodies.append(body)
        if honour_retry_after and retry_after:
            if time.perf_counter() + retry_after >= stop_at:
                break  # told to come back after the run ends
            await asyncio.sleep(retry_after)
    if client is not None and client.transport is not None:
        client.transport.close()


async def load(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    seconds: float,
    total: int,
    honour_retry_after: bool,
    keep_bodies: bool = False,
) -> LoadResult:
    """Keep ``concurrency`` requests in flight for ``seconds`` or ``total`` answers; with
    ``honour_retry_after``, a client told to retry later waits as long as it is told."""
    result = LoadResult(seconds, bodies=[] if keep_bodies else None)
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(
            _worker(host, port, request, stop_at, total, result, honour_retry_after)
            for _ in range(concurrency)
        )
    )
    result.seconds = time.perf_counter() - started
    return result


def run_load(
    host: str,
    port: int,
    request: bytes,
    concurrency: int,
    seconds: float,
    total: int = 2**62,
    honour_retry_after: bool = False,
    keep_bodies: bool = False,
) -> LoadResult:
    """``load`` on its own event loop (uvloop's when installed)."""
    work = load(host, port, request, concurrency, seconds, total, honour_retry_after, keep_bodies)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(work)
    return uvloop.run(work)
