"""The one exception type that becomes an HTTP error answer: ``{"error": message}``."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server will not serve (4xx) or could not (5xx), with its status code."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
