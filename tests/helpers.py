"""Helpers the tests share: running the real command line, and reading the Dockerfiles."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu"]


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


def reference_session(path: Path):
    """An ONNX Runtime session on the CPU for reference outputs, registering ln2d's native
    library as ln2d itself does, so that it also loads a cpu-native model."""
    import onnxruntime as ort

    from ln2d import native

    options = native.session_options()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def image_command(dockerfile: Path) -> tuple[list[str], dict[str, str]]:
    """The final stage's ENTRYPOINT and ENV, as the container would run them."""
    final = dockerfile.read_text().split("\nFROM ")[-1].replace("\\\n", " ")
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M)[1])
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*)$", final, re.M):
        env.update(re.findall(r"(\w+)=(\S+)", block))
    # PATH extends the base's: here, this machine's.
    env["PATH"] = env.get("PATH", "$PATH").replace("$PATH", os.environ["PATH"])
    return entrypoint, env


def fusion_targets() -> list:
    """Every fusion target as a test parameter; the ones this install cannot use (cpu-native
    without the compiled library) skip, with the reason."""
    import pytest

    from ln2d.export.fusion.targets import TARGETS, usable

    reason = "ln2d.native was not compiled in this install (no C compiler)"
    return [
        pytest.param(target, marks=pytest.mark.skipif(not usable(target), reason=reason))
        for target in TARGETS
    ]


@functools.cache
def cuda_unavailable() -> str | None:
    """Why ONNX Runtime's CUDA provider cannot run a session here, or None when it can. Its
    being listed is not enough: onnxruntime-gpu lists it on a machine without a GPU or CUDA."""
    import onnx
    from onnx import TensorProto, helper

    from ln2d.runtime import ProviderNotActive, SessionSettings, open_session

    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in "xy"]
    identity = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([identity], "probe", tensor[:1], tensor[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    try:
        open_session(model, SessionSettings("cuda"))
    except ProviderNotActive as error:
        return str(error)
    return None


def with_moved_record(source: Path, target: Path, shift: float = 0.01) -> Path:
    """``source`` written to ``target`` with every expected output of its parity record moved
    by ``shift``: the model itself unchanged, its record no longer met anywhere."""
    import dataclasses

    import numpy as np
    import onnx

    from ln2d.export import metadata
    from ln2d.metadata import ModelMetadata

    model = onnx.load(source)
    record = metadata.read(model).parity_record
    moved = tuple(e + np.float32(shift) for e in record.expected)
    metadata.write(model, ModelMetadata(parity_record=dataclasses.replace(record, expected=moved)))
    onnx.save(model, target)
    return target
