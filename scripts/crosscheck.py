"""A second, independent timing of docs/benchmarks.md's headline numbers.

Nothing of ``ln2d bench`` is reused: the networks are exported by TorchScript
(``torch.onnx.export(dynamo=False)``, opset 18) instead of the dynamo exporter, fused by the
``ln2d fuse`` command line, and each model is timed in a fresh Python process of its own
(no torch imported there) in blocks of runs, the two models' blocks alternating.

    python scripts/crosscheck.py   # about two minutes on 2 cores
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ln2d.export.bench_models import NETWORKS, build

TIMER = """
import sys, time, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 2
o.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = {s.get_inputs()[0].name: np.random.default_rng(1).standard_normal(
    [int(v) for v in sys.argv[2].split(",")]).astype(np.float32)}
for _ in range(10): s.run(None, x)
t = []
for _ in range(int(sys.argv[3])):
    a = time.perf_counter(); s.run(None, x); t.append(time.perf_counter() - a)
print(" ".join(str(v) for v in t))
"""


def export(name: str, size: int, path: Path) -> None:
    network = NETWORKS[name]
    module = build(network, 3)
    x = torch.zeros(1, 3, size, size)
    axes = {"x": {0: "n", 2: "h", 3: "w"}}
    torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=18,
                      input_names=["x"], dynamic_axes=axes)  # fmt: skip


def fuse(source: Path, out: Path, *flags: str) -> None:
    command = [sys.executable, "-m", "ln2d", "fuse", str(source), "-o", str(out), *flags]
    subprocess.run([*command, "--no-progress"], check=True, capture_output=True)


def block(model: Path, shape: str, runs: int) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-c", TIMER, str(model), shape, str(runs)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [float(v) for v in done.stdout.split()]


def compare(a: Path, b: Path, shape: str, runs: int, blocks: int = 6) -> float:
    """Median time of a over median time of b, blocks alternating a, b, a, b, ..."""
    times: dict[Path, list[float]] = {a: [], b: []}
    for _ in range(blocks):
        for model in (a, b):
            times[model] += block(model, shape, runs)
    return statistics.median(times[a]) / statistics.median(times[b])


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cases = [("simple", 32, ["1,3,32,32", "8,3,32,32", "32,3,32,32"]),
                 ("convnext-atto", 224, ["1,3,224,224", "8,3,224,224"])]  # fmt: skip
        for name, size, shapes in cases:
            source, cpu, tuned = tmp / f"{name}.onnx", tmp / "cpu.onnx", tmp / "tuned.onnx"
            export(name, size, source)
            fuse(source, cpu)
            for shape in shapes:
                runs = 200 if shape.startswith("1,") else 40
                cpu_speedup = compare(source, cpu, shape, runs)
                print(f"{name} {shape}: cpu target {cpu_speedup:.2f}x", end="")
                if name == "convnext-atto":
                    fuse(source, tuned, "--tune", "--shape", shape)
                    print(f", --tune {compare(source, tuned, shape, runs):.2f}x", end="")
                print(" over the exporter's graph")


if __name__ == "__main__":
    main()
