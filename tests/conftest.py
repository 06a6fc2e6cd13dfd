"""Shared fixtures: a trained digits checkpoint (trained once per session, for real), its
export, and each x86-64 level of the native kernels.

The older-CPU lane (``make test-older-cpu``) trains and exports on the machine that runs it,
as a user would, then runs the ``cpu_numerics`` tests on an emulated older CPU: it names the
folder with those models in LN2D_TEST_MODELS, and the fixtures take them from there."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ln2d import native
from tests.helpers import run_cli

MODELS = Path(os.environ["LN2D_TEST_MODELS"]) if os.environ.get("LN2D_TEST_MODELS") else None


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SimpleLN_CNN trained on the digits with the CLI's defaults."""
    if MODELS is not None:
        return MODELS / "digits.safetensors"
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
    if MODELS is not None:
        return MODELS / "digits.onnx"
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


@pytest.fixture(scope="session")
def fp16_onnx(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits checkpoint exported in fp16 (``--precision fp16``)."""
    if MODELS is not None:
        return MODELS / "fp16.onnx"
    path = tmp_path_factory.mktemp("fp16") / "fp16.onnx"
    result = run_cli("export", str(digits_checkpoint), "-o", str(path), "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="session")
def u8s8_onnx(digits_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model quantized with 8-bit weights (``--scheme u8s8 --per-channel``), the
    scheme whose accuracy on a CPU without VNNI is not the accuracy measured with it."""
    if MODELS is not None:
        return MODELS / "u8s8.onnx"
    path = tmp_path_factory.mktemp("u8s8") / "u8s8.onnx"
    args = ["--scheme", "u8s8", "--per-channel", "--no-progress"]
    result = run_cli("quantize", str(digits_onnx), "-o", str(path), *args)
    assert result.returncode == 0, result.stderr
    return path


def pytest_terminal_summary(terminalreporter):
    """The generated-fusion tests' coverage, where they ran (tests/generated_graphs.py)."""
    generated = sys.modules.get("tests.generated_graphs")
    for coverage in generated.Coverage.every if generated is not None else ():
        if coverage.ran:
            terminalreporter.write_line(coverage.line())
