"""Where ONNX Runtime runs each node: read from its profile (export.placement).

On a machine without CUDA only the CPU half runs; the CUDA test skips with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ln2d.export.onnx_export import INPUT_NAME, default_opset
from ln2d.export.placement import run_and_place
from tests.helpers import cuda_unavailable, run_cli

pytestmark = pytest.mark.integration  # a trained checkpoint exported by the command line


@pytest.fixture(scope="module")
def cuda_export(digits_checkpoint, tmp_path_factory) -> onnx.ModelProto:
    path = tmp_path_factory.mktemp("cuda") / "cuda.onnx"
    result = run_cli("export", str(digits_checkpoint), "-o", str(path), "--target", "cuda")
    assert result.returncode == 0, result.stderr
    return onnx.load(str(path))


def _digits_batch() -> dict[str, np.ndarray]:
    return {INPUT_NAME: np.random.default_rng(0).standard_normal((4, 1, 16, 16), np.float32)}


def test_the_cuda_target_writes_the_opset_whose_pools_the_gpu_runs(cuda_export):
    opset = next(o.version for o in cuda_export.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == default_opset("cuda") == 21


def test_on_the_cpu_every_node_is_placed_on_the_cpu(cuda_export):
    (logits,), on_cpu = run_and_place(cuda_export.SerializeToString(), _digits_batch(), "cpu")
    assert logits.shape == (4, 10)
    # what the profile names is what ran: the graph's ops, after ONNX Runtime's own rewrites
    assert {"LayerNormalization", "MaxPool", "Gemm"} <= set(on_cpu)


@pytest.mark.cuda
def test_on_cuda_the_cuda_target_runs_every_node_on_the_gpu(cuda_export):
    if reason := cuda_unavailable():
        pytest.skip(reason)
    _, on_cpu = run_and_place(cuda_export.SerializeToString(), _digits_batch(), "cuda")
    # ONNX Runtime keeps shape arithmetic on the CPU on purpose; nothing else may fall back
    assert set(on_cpu) <= {"Shape", "Gather", "Concat", "Unsqueeze", "Reshape"}, on_cpu
