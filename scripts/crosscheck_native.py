"""A second, independent timing of the native kernel against the exporter's graph.

Nothing of ``ln2d bench`` is reused: a bare LayerNorm2d (C = 96) is exported by TorchScript
(``torch.onnx.export(dynamo=False)``, opset 18), the native model is written by hand with
``onnx.helper``, and each is timed at 8x96x56x56 in a fresh Python process of its own (200
runs after 20 warm-up runs, 2 threads, spinning off), the two alternating, four times each.

    python scripts/crosscheck_native.py   # about half a minute on 2 cores
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from ln2d import native
from ln2d.layers import LayerNorm2d

C = 96
TIMER = """
import sys, time, numpy as np, onnxruntime as ort
from ln2d import native
o = native.session_options(); o.intra_op_num_threads = 2
o.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = {"x": np.random.default_rng(1).standard_normal((8, 96, 56, 56)).astype(np.float32)}
for _ in range(20): s.run(None, x)
t = []
for _ in range(200):
    a = time.perf_counter(); s.run(None, x); t.append(time.perf_counter() - a)
print(sorted(t)[len(t) // 2] * 1000)
"""


def decomposed(path: Path) -> None:
    torch.onnx.export(
        LayerNorm2d(C).eval(), (torch.zeros(2, C, 8, 8),), str(path), dynamo=False,
        opset_version=18, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}},
    )  # fmt: skip


def native_model(path: Path) -> None:
    shape = ["n", C, "h", "w"]
    node = helper.make_node(native.OP, ["x", "s", "b"], ["y"], domain=native.DOMAIN, epsilon=1e-6)
    graph = helper.make_graph(
        [node],
        "layernorm2d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor("s", TensorProto.FLOAT, [C], np.ones(C, np.float32)),
            helper.make_tensor("b", TensorProto.FLOAT, [C], np.zeros(C, np.float32)),
        ],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(native.DOMAIN, 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        paths = {"decomposed": Path(scratch) / "d.onnx", "native": Path(scratch) / "n.onnx"}
        decomposed(paths["decomposed"])
        native_model(paths["native"])
        timings: dict[str, list[float]] = {name: [] for name in paths}
        for round_ in range(4):
            order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
            for name in order:
                command = [sys.executable, "-c", TIMER, str(paths[name])]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                timings[name].append(float(done.stdout))
        d, n = (statistics.median(timings[name]) for name in ("decomposed", "native"))
        print(f"8x{C}x56x56: decomposed {d:.3f} ms, native {n:.3f} ms, {d / n:.2f}x")


if __name__ == "__main__":
    main()
