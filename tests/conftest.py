"""Shared fixtures: a trained digits checkpoint (trained once per session, for real)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ln2d import native
from tests.helpers import run_cli


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SimpleLN_CNN trained on the digits with the CLI's defaults."""
    path = tmp_path_factory.mktemp("ckpt") / "digits.safetensors"
    result = run_cli("train", "--out", str(path), "--no-progress")
    assert result.returncode == 0, result.stderr
    return path


# The target the served digits model is fused for: make test-native-serving runs the serving
# tests again with cpu-native (ln2d's own op).
SERVED_TARGET = os.environ.get("LN2D_TEST_TARGET", "cpu")


@pytest.fixture(scope="session")
def digits_onnx(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits checkpoint exported (and fused) by ``ln2d export``."""
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    result = run_cli("export", str(digits_checkpoint), "-o", str(path), "--target", SERVED_TARGET)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(params=native.LEVELS)
def native_level(request: pytest.FixtureRequest) -> str:
    """Each x86-64 clone of the native kernels in turn, in both libraries; a level this CPU
    lacks is skipped (the older-CPU lane runs the others)."""
    if request.param not in native.cpu_levels():
        pytest.skip(f"this CPU cannot run the {request.param} kernels")
    before = native.level()
    native.set_level(request.param)
    yield request.param
    native.set_level(before)


def pytest_terminal_summary(terminalreporter):
    """The generated-fusion tests' coverage, where they ran (tests/generated_graphs.py)."""
    generated = sys.modules.get("tests.generated_graphs")
    for coverage in generated.Coverage.every if generated is not None else ():
        if coverage.ran:
            terminalreporter.write_line(coverage.line())
