"""The one exception type that becomes an HTTP error answer, ``{"error": message}``, and how
the OpenAPI document describes those answers."""

from __future__ import annotations

from pydantic import BaseModel

# What each error status means on this server, as the OpenAPI document says it.
MEANINGS = {
    400: "malformed input: image, tensor, JSON, shape; not ready (readiness); a model that "
    "failed to load (repository load)",
    401: "missing or wrong bearer token (when the server has one)",
    403: "model load / unload while --model-control-mode is not explicit",
    404: "unknown model name or version, or one not being served",
    408: "the request body did not arrive within the request's deadline",
    413: "body, image or image count over the server's limits",
    415: "unsupported media type, or a compressed body",
    422: "a query or path parameter out of range",
    503: "busy, not ready, or the model is still loading; retry after the Retry-After header",
    504: "the request's deadline passed before inference finished",
}


class ErrorResponse(BaseModel):
    """Every error answer's body."""

    error: str


def documented(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses`` entries for these error statuses, all with the error schema."""
    return {s: {"model": ErrorResponse, "description": MEANINGS[s]} for s in statuses}


class ApiError(Exception):
    """A request the server will not serve (4xx) or could not (5xx), with its status code."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        """``reason`` tells refusals of one status apart where another protocol needs it:
        ``queue_full`` is gRPC's RESOURCE_EXHAUSTED, any other 503 its UNAVAILABLE."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.reason = reason
