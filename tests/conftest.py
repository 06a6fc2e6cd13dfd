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
from filelock import FileLock

from ln2d import native
from tests.helpers import run_cli

MODELS = Path(os.environ["LN2D_TEST_MODELS"]) if os.environ.get("LN2D_TEST_MODELS") else None
# The target the served digits model is fused for: make test-native-serving runs the serving
# tests again with cpu-native (ln2d's own op).
SERVED_TARGET = os.environ.get("LN2D_TEST_TARGET", "cpu")


def _made(factory: pytest.TempPathFactory, name: str, *command: str) -> Path:
    """The file ``name``, made once for the whole run by the real ``ln2d *command`` (``OUT``
    stands for its path): one maker among pytest-xdist's workers, the others wait for it (a
    file lock); or taken from LN2D_TEST_MODELS."""
    if MODELS is not None:
        return MODELS / name
    shared = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    path = shared / "models" / name
    path.parent.mkdir(exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.exists():
            partial = path.with_name(f"partial-{name}")
            result = run_cli(*(str(partial) if arg == "OUT" else arg for arg in command))
            assert result.returncode == 0, result.stderr
            partial.rename(path)
    return path


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SimpleLN_CNN trained on the digits with the CLI's defaults."""
    return _made(tmp_path_factory, "digits.safetensors", "train", "--out", "OUT", "--no-progress")


@pytest.fixture(scope="session")
def digits_onnx(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits checkpoint exported (and fused) by ``ln2d export``."""
    args = ["export", str(digits_checkpoint), "-o", "OUT", "--target", SERVED_TARGET]
    return _made(tmp_path_factory, "digits.onnx", *args)


@pytest.fixture(scope="session")
def fp16_onnx(digits_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits checkpoint exported in fp16 (``--precision fp16``)."""
    args = ["export", str(digits_checkpoint), "-o", "OUT", "--precision", "fp16"]
    return _made(tmp_path_factory, "fp16.onnx", *args)


@pytest.fixture(scope="session")
def u8s8_onnx(digits_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits model quantized with 8-bit weights (``--scheme u8s8 --per-channel``), the
    scheme whose accuracy on a CPU without VNNI is not the accuracy measured with it."""
    args = ["quantize", str(digits_onnx), "-o", "OUT", "--scheme", "u8s8", "--per-channel"]
    return _made(tmp_path_factory, "u8s8.onnx", *args, "--no-progress")


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With LN2D_TEST_TARGET (make test-native-serving), only the tests whose outcome can
    depend on how the served digits model was fused: those that serve it, but not those
    marked ``any_target``. Then the files with a test marked slow first, the longest first
    (``slow(minutes=N)``, where a file says how long it takes), each file's tests in their
    order: pytest-xdist hands out whole files (--dist loadfile), and a long file last would run
    alone while the other worker idles."""
    if "LN2D_TEST_TARGET" in os.environ:
        kept = [
            item
            for item in items
            if "digits_onnx" in getattr(item, "fixturenames", ())
            and not item.get_closest_marker("any_target")
        ]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    minutes: dict[Path, float] = {}
    for item in items:
        for mark in item.iter_markers("slow"):
            minutes[item.path] = max(minutes.get(item.path, 0.0), mark.kwargs.get("minutes", 0.0))
    items.sort(key=lambda item: (item.path not in minutes, -minutes.get(item.path, 0.0)))


def pytest_terminal_summary(terminalreporter):
    """The generated-fusion tests' coverage, where they ran (tests/generated_graphs.py)."""
    generated = sys.modules.get("tests.generated_graphs")
    for coverage in generated.Coverage.every if generated is not None else ():
        if coverage.ran:
            terminalreporter.write_line(coverage.line())
