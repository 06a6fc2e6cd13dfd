"""What ONNX Runtime's NCHWc layout costs and saves around ln2d's native op.

ONNX Runtime's CPU provider runs Conv in a blocked layout (NCHWc) and converts back to NCHW,
with a ReorderOutput before and a ReorderInput after, around any op that only takes NCHW, a
custom op such as ``ai.ln2d::LayerNorm2d`` among them. The only way to drop those reorders from
outside is to switch the layout transformer off for the session (``NchwcTransformer`` in
``disabled_optimizers``). This times the cpu-native and cpu targets' graphs both ways, side by
side in a shuffled order, 2 threads, spinning off, with an A/A control (the cpu-native session
with NCHWc opened twice: the ratio of the two says how far apart equal things measure).

    python scripts/native_layout.py   # about a minute on 2 cores
"""

from __future__ import annotations

import random
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch

from ln2d import native
from ln2d.export.bench_models import NETWORKS, build
from ln2d.export.fusion import lower, match
from ln2d.export.onnx_export import DEFAULT_OPSET, INPUT_NAME, module_to_onnx

POINTS = (("simple", 32, (1, 8, 32)), ("convnext-atto", 224, (1, 8)))
SECONDS = 2.0  # per session and point
CONTROL = ("cpu-native", "A/A")


def main() -> None:
    print("| network | batch | A/A | cpu-native | cpu-native, no NCHWc | cpu | cpu, no NCHWc |")
    print("|---|---|---|---|---|---|---|")
    for name, size, batches in POINTS:
        graphs = _graphs(name, size)
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, size, size), np.float32)
            sessions = {
                (target, nchwc): _session(graph, nchwc)
                for target, graph in graphs.items()
                for nchwc in (True, False)
            }
            sessions[CONTROL] = _session(graphs["cpu-native"], True)
            ms = _interleaved(sessions, {INPUT_NAME: x})
            control = ms[("cpu-native", True)] / ms.pop(CONTROL)
            cells = [f"{control:.3f}"] + [f"{value:.3f}" for value in ms.values()]
            print(f"| {name} | {batch} | " + " | ".join(cells) + " |")


def _graphs(name: str, size: int) -> dict[str, bytes]:
    module = build(NETWORKS[name], 3)
    matched = match(module_to_onnx(module, torch.zeros(2, 3, size, size), DEFAULT_OPSET))
    return {t: lower(matched, t)[0].SerializeToString() for t in ("cpu-native", "cpu")}


def _session(model: bytes, nchwc: bool) -> ort.InferenceSession:
    options = native.session_options()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    disabled = None if nchwc else ["NchwcTransformer"]
    return ort.InferenceSession(
        model, options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled
    )


def _interleaved(sessions: dict, feeds: dict) -> dict:
    for session in sessions.values():
        session.run(None, feeds)
    times = {key: [] for key in sessions}
    order = list(sessions)
    deadline = time.perf_counter() + SECONDS * len(sessions)
    while time.perf_counter() < deadline:
        random.shuffle(order)
        for key in order:
            started = time.perf_counter()
            sessions[key].run(None, feeds)
            times[key].append(time.perf_counter() - started)
    return {key: statistics.median(t) * 1e3 for key, t in times.items()}


if __name__ == "__main__":
    main()
