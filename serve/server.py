"""Run the app under uvicorn: JSON logs, a graceful drain on SIGTERM, exit 0 after it."""

from __future__ import annotations

import functools
import json
import logging
import time
from types import FrameType

import uvicorn

from ln2d.serve.app import create_app
from ln2d.serve.connections import HeadTimeoutProtocol
from ln2d.serve.dataplane import DataPlane
from ln2d.serve.settings import Settings

log = logging.getLogger("ln2d.serve")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so that log collectors need no parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class DrainingServer(uvicorn.Server):
    """Marks the app not ready the moment SIGTERM/SIGINT arrives; uvicorn then stops accepting
    and waits up to ``timeout_graceful_shutdown`` for in-flight requests."""

    def __init__(self, config: uvicorn.Config, state: DataPlane) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.state.set_not_ready("draining")
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal once it has shut down, which would end a completed
        # drain with status 143 instead of 0.
        self._captured_signals.clear()


def serve(settings: Settings) -> bool:
    """Open a single model file (raising ModelLoadError before any port is bound), then serve
    until a signal; a repository's models load once the server is up. False if the server
    could not start (for example, the port is taken)."""
    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        http=functools.partial(HeadTimeoutProtocol, head_timeout_s=settings.head_timeout_s),
        access_log=False,  # ours is structured and carries the request id
        timeout_graceful_shutdown=settings.drain_timeout_s,
        server_header=False,
    )
    server = DrainingServer(config, app.state.ln2d)
    server.run()
    return server.started
