"""A minimal client for ``/v1/classify`` and ``/v1/models/{name}/classify`` (standard library
only)."""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientFailure(Exception):
    """The server could not be reached, or it refused the image; the message says which."""


def classify(
    path: Path,
    url: str,
    top_k: int,
    token: str | None,
    timeout: float,
    model: str | None = None,
) -> dict:
    """POST one image file as the raw body, to ``model`` or the server's default; the server's
    JSON answer."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClientFailure(f"cannot read {path}: {exc.strerror}") from None
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {"Content-Type": media_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    route = "/v1/classify" if model is None else f"/v1/models/{quote(model, safe='')}/classify"
    request = urllib.request.Request(
        f"{url.rstrip('/')}{route}?top_k={top_k}", data=data, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise ClientFailure(f"{path}: HTTP {exc.code}: {_error_message(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientFailure(f"cannot reach {url}: {reason}") from None


def _error_message(exc: urllib.error.HTTPError) -> str:
    body = exc.read()
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:200] or exc.reason
