"""Start ``ln2d serve`` as a child process on a free port and wait until it is ready.

Used by ``ln2d predict --serve``, the serving benchmark and the tests, so that each of them
runs the real command, exactly as a user or a container would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

LISTENING = re.compile(r"running on http://([^:\s]+):(\d+)")
GRPC_LISTENING = re.compile(r"gRPC running on ([^:\s]+):(\d+)")


class LaunchError(Exception):
    """The server exited or did not become ready in time; the message has its last log lines."""


class ServerProcess:
    """A running ``ln2d serve``; ``stop()`` sends SIGTERM and returns the exit status."""

    def __init__(
        self,
        model: Path | None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
        ready_timeout: float = 60.0,
        wait_ready: bool = True,
    ) -> None:
        """``command`` (default: this Python's ``ln2d serve``) ``model --port 0 args``; with
        ``model=None``, the command and ``env`` alone say what to serve and where. Returns
        once the server is ready, or with ``wait_ready=False`` once it listens."""
        argv = list(command or [sys.executable, "-m", "ln2d", "serve"])
        if model is not None:
            argv += [str(model), "--port", "0"]
        self.process = subprocess.Popen(
            [*argv, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.logs: list[str] = []
        self._address = threading.Event()
        self.host, self.port = "", 0
        self.grpc_port: int | None = None  # when started with --grpc-port
        threading.Thread(target=self._read_logs, daemon=True).start()
        self._wait_ready(ready_timeout, wait_ready)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _read_logs(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.logs.append(line.rstrip("\n"))
            grpc_match = GRPC_LISTENING.search(line)
            if grpc_match:
                self.grpc_port = int(grpc_match[2])
            match = LISTENING.search(line)
            if match and not self._address.is_set():
                self.host, self.port = match[1], int(match[2])
                self._address.set()

    def _wait_ready(self, timeout: float, ready: bool) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LaunchError(
                    f"ln2d serve exited with {self.process.returncode}: {self.tail()}"
                )
            if self._address.is_set() and (not ready or self.ready()):
                return
            time.sleep(0.05)
        self.kill()
        raise LaunchError(f"ln2d serve was not ready within {timeout:.0f} s: {self.tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                return json.load(response).get("ready") is True
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def tail(self, lines: int = 5) -> str:
        return " | ".join(self.logs[-lines:]) or "(no output)"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the drain, and return the exit status (killed after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for servers that cannot be told port 0 (Ray Serve's proxy): another
    process could take it before they bind it, which loopback tests accept."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
