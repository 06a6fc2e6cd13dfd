"""Shared fixtures: a trained digits checkpoint (trained once per session, for real)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run the real ``ln2d`` command in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "ln2d", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SimpleLN_CNN trained on the digits with the CLI's defaults."""
    path = tmp_path_factory.mktemp("ckpt") / "digits.safetensors"
    result = run_cli("train", "--out", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="session")
def digits_onnx(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits checkpoint exported (and fused) by ``ln2d export``."""
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    result = run_cli("export", str(digits_checkpoint), "-o", str(path))
    assert result.returncode == 0, result.stderr
    return path
