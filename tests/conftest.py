"""Shared fixtures: a trained digits checkpoint (trained once per session, for real)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

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


def pytest_terminal_summary(terminalreporter):
    """The generated-fusion tests' coverage, where they ran (tests/generated_graphs.py)."""
    generated = sys.modules.get("tests.generated_graphs")
    for coverage in generated.Coverage.every if generated is not None else ():
        if coverage.ran:
            terminalreporter.write_line(coverage.line())
