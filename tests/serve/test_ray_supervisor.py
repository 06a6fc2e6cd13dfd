"""``ln2d serve-ray``'s process handling (``ln2d.serve.ray_supervisor``): the real command, on
a Ray instance of its own, stopped the ways a terminal and an orchestrator stop it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray", reason="the ray extra is not installed: pip install 'ln2d[ray]'")

from ln2d.serve.tools.launcher import free_port
from tests.images import digit, png

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.any_target]

PNG = png(digit(3)[0])
PNG_HEADERS = {"content-type": "image/png"}


def _family(pid: int) -> set[int]:
    """``pid``, its descendants, and every process in their sessions (Ray's, HAProxy)."""
    children: dict[int, list[int]] = {}
    sessions: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        child = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(child)
        sessions[child] = int(fields[3])
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        found.add(current)
        todo += children.get(current, [])
    started = {sessions.get(p) for p in found}
    return found | {p for p, s in sessions.items() if s in started and s != os.getsid(0)}


def _alive(pids: set[int]) -> list[str]:
    """The command lines of those of ``pids`` that still run (a zombie has ended: it waits
    only for whoever adopted it to read its status)."""
    alive = []
    for pid in pids:
        with suppress(OSError, IndexError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.append(
                    f"{pid} {Path(f'/proc/{pid}/cmdline').read_text().replace(chr(0), ' ')}"
                )
    return alive


def _listening(pids: set[int]) -> dict[str, str]:
    """The local addresses of the TCP listeners of ``pids``, each with its process's name."""
    table = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in table.splitlines():
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            if int(pid) in pids:
                found[line.split()[3]] = name
    return found


@pytest.mark.parametrize(
    ("signum", "to"),
    [(signal.SIGINT, "its process group"), (signal.SIGTERM, "the process")],
    ids=["Ctrl-C", "SIGTERM"],
)
def test_a_stop_however_asked_ends_in_time_and_leaves_no_process(digits_onnx, signum, to):
    """In a process group of its own, as a terminal's foreground job is: a terminal's Ctrl-C
    (SIGINT to the whole group) and an orchestrator's SIGTERM (to the process). The command
    ends within its drain timeout, exit 0, with nothing it started left, Ray's processes and
    HAProxy included; HAProxy listens on --host:--port alone. Both signals have one handler,
    and Ray's processes are outside the group either way, so these two cover each signal and
    each target."""
    port = free_port()
    command = [sys.executable, "-m", "ln2d", "serve-ray", str(digits_onnx), "--port", str(port),
               "--no-access-log", "--drain-timeout-s", "20"]  # fmt: skip
    # Its own instance, as serve-ray without --address starts, whatever RAY_ADDRESS names.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
    )
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "serving at" in line:
                break
        assert "through Ray's HAProxy ingress" in lines[-1], "".join(lines[-20:])
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(url + "/v1/classify", content=PNG, headers=PNG_HEADERS).status_code == 200
        family = _family(process.pid)
        listening = _listening(family)
        assert [a for a, name in listening.items() if name == "haproxy"] == [f"127.0.0.1:{port}"]
        assert any("raylet" in p for p in _alive(family))
        asked = time.monotonic()
        if to == "the process":
            process.send_signal(signum)
        else:
            os.killpg(process.pid, signum)
        assert process.wait(timeout=60) == 0
        assert time.monotonic() - asked < 20
        assert _alive(family) == []
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
