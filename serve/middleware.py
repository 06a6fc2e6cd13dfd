"""Plain ASGI middleware (no per-request task, unlike BaseHTTPMiddleware): access log with a
request id and request metrics, the request body's limits in size and time, and load
shedding."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ln2d.serve.metrics import Metrics

if TYPE_CHECKING:
    from ln2d.serve.tracing import Tracer

access_log = logging.getLogger("ln2d.access")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes, scrapes and the page's files: a trace each would bury the requests in noise.
UNTRACED = ("/v2/health/", "/metrics", "/static/", "/docs", "/openapi.json")


class RequestLog:
    """Counts and times every request by route template, tags it with ``X-Request-ID`` (the
    client's own, when it is a sane token), logs one JSON line per request, and, when tracing,
    opens the request's trace span (continuing the client's ``traceparent``) for the handlers
    (``scope["state"]["span"]``) and closes it with the status."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, enabled: bool, tracer: Tracer | None = None
    ) -> None:
        self.app, self.metrics, self.enabled, self.tracer = app, metrics, enabled, tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        status = 500
        span = None
        if self.tracer is not None and not scope["path"].startswith(UNTRACED):
            span = self._open_span(scope, request_id)

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_tagged)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            model, version = scope.get("state", {}).get("served", ("", ""))
            self.metrics.count_request(endpoint, status, model, version)
            self.metrics.observe("total", elapsed, model, version)
            if span is not None:
                self._close_span(span, scope, endpoint, status, model, version)
            if self.enabled:
                entry = {
                    "request_id": request_id.decode(),
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "model": model,
                    "version": version,
                    "ms": round(elapsed * 1000, 3),
                    "client": (scope.get("client") or ("", 0))[0],
                }
                if span is not None:
                    entry["trace_id"] = self.tracer.trace_id(span)
                access_log.info(json.dumps(entry))

    def _open_span(self, scope: Scope, request_id: bytes):
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        attributes = {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "ln2d.request_id": request_id.decode(),
        }
        span = self.tracer.request(f"{scope['method']} {scope['path']}", headers, attributes)
        scope.setdefault("state", {})["span"] = span
        return span

    def _close_span(self, span, scope: Scope, endpoint: str, status: int, model: str, version: str):
        span.update_name(f"{scope['method']} {endpoint}")
        span.set_attribute("http.route", endpoint)
        span.set_attribute("http.response.status_code", status)
        if model:
            span.set_attribute("ln2d.model", model)
            span.set_attribute("ln2d.version", version)
        self.tracer.finish(span, status, ok=status < 500)


# Unique per process start and cheap: uuid4 per request costs a getrandom() system call.
_ID_PREFIX = uuid.uuid4().hex[:12]
_ids = itertools.count(1)


def _request_id(scope: Scope) -> bytes:
    return request_id(dict(scope["headers"]).get(b"x-request-id"))


def request_id(sent: bytes | None) -> bytes:
    """The client's ``X-Request-ID`` when it is a sane token, else a new one (any protocol)."""
    if sent is not None and REQUEST_ID.fullmatch(sent.decode("latin-1")):
        return sent
    return f"{_ID_PREFIX}-{next(_ids)}".encode()


class BodyRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BodyGuard:
    """Bounds how much a request body may be and how long it may take to arrive.

    413 for a body over ``limit`` bytes: at once from Content-Length, or as soon as a streamed
    (chunked) body crosses it. 408 for a body not complete by the request's deadline, which
    starts here, when the head has arrived, and which the handler then shares
    (``scope["state"]["deadline"]``, in ``time.monotonic()`` seconds). Both close the
    connection: the rest of the body is never read.
    """

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        scope.setdefault("state", {})["deadline"] = deadline
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await send_error(send, 413, self._too_large, {"connection": "close"})
            return
        received = 0
        complete = False
        started = False

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body, receive() waits for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    message = await receive()
            except TimeoutError:
                raise BodyRefused(408, self._too_slow(received)) from None
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyRefused(413, self._too_large)
            complete = not message.get("more_body", False)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, watching_send)
        except BodyRefused as refused:
            if not started:
                await send_error(send, refused.status, refused.message, {"connection": "close"})

    @property
    def _too_large(self) -> str:
        return f"request body larger than {self.limit} bytes"

    def _too_slow(self, received: int) -> str:
        return (
            f"request body not complete within the {self.timeout_s:g} s deadline "
            f"({received} bytes received)"
        )


class LoadShedding:
    """Refuses POSTs with 503 before routing or reading the body while ``busy(path)`` gives
    a reason (not ready, or that path's model is full), so that an overloaded model costs
    microseconds, not a whole request, per refusal; admission itself stays exact in each
    model's batcher."""

    def __init__(self, app: ASGIApp, busy: Callable[[str], str | None]) -> None:
        self.app, self.busy = app, busy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            reason = self.busy(scope["path"])
            if reason is not None:
                await send_error(send, 503, reason, {"retry-after": "1"})
                return
        await self.app(scope, receive, send)


async def send_error(send: Send, status: int, message: str, headers: dict[str, str]) -> None:
    """Answer ``{"error": message}`` straight from the ASGI layer."""
    body = json.dumps({"error": message}).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
