"""Timing ONNX Runtime sessions side by side without bias. Torch-free on purpose.

Three things make such timings lie, and each is handled here:
- spinning threads: a session's idle intra-op threads (and torch's OpenMP workers) keep
  spinning after a call and steal the cores from whatever runs next. Sessions run with
  spinning off, and this module never imports torch; ``ln2d bench`` runs it in a subprocess.
- order: the variant timed right after another pays for its cache and frequency state. The
  order is shuffled every round.
- noise: every table carries an A/A control, one model loaded twice as two variants; their
  ratio says how far apart two equal things measure in this run.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import numpy as np

from ln2d.runtime import SessionSettings, open_session

AA_SUFFIX = " (A/A)"  # the control variant's name: the same model's second session
AA_LIMIT = 0.05  # an A/A ratio further from 1 than this marks the run as too noisy

Runner = Callable[[], object]


def op_profile(model: str, feeds: dict[str, np.ndarray], threads: int, runs: int = 20) -> dict:
    """ONNX Runtime's own profiler: mean microseconds per run spent in each op type's kernels
    (after two warm-up runs), the layout reorders of its NCHWc transformer included."""
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        settings = SessionSettings(threads=threads, profile_to=os.path.join(folder, "ort"))
        profiled = open_session(model, settings)
        for _ in range(runs + 2):
            profiled.run(None, feeds)
        with open(profiled.end_profiling()) as trace:
            events = json.load(trace)
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    skip = 2 * len(kernels) // (runs + 2)  # the warm-up runs' kernels come first
    total: dict[str, float] = {}
    for event in kernels[skip:]:
        op = event["args"]["op_name"]
        total[op] = total.get(op, 0.0) + event["dur"] / runs
    return dict(sorted(total.items(), key=lambda item: -item[1]))


def runner(model_session, feeds: dict[str, np.ndarray], provider: str = "cpu") -> Runner:
    """One inference per call. On CUDA the inputs are copied to the GPU once and the outputs
    stay there: a host round trip per call would time the PCIe bus, not the graph."""
    if provider == "cpu":
        return lambda: model_session.run(None, feeds)
    import onnxruntime as ort

    binding = model_session.io_binding()
    for name, value in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for output in model_session.get_outputs():
        binding.bind_output(output.name, "cuda")

    def run() -> None:
        model_session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the kernels have finished when the clock stops

    return run


def interleaved(
    runners: dict[str, Runner], seconds: float, seed: int = 0, min_rounds: int = 5
) -> dict[str, float]:
    """Median ms per runner: each runs once per round, in a fresh random order every round,
    until ``seconds`` per runner are spent (at least ``min_rounds``, at most 1000)."""
    for run in runners.values():  # warm-up: allocations, kernel selection
        run()
        run()
    order = list(runners)
    shuffle = random.Random(seed).shuffle
    times: dict[str, list[float]] = {name: [] for name in runners}
    deadline = time.perf_counter() + seconds * len(runners)
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < deadline and rounds < 1000):
        shuffle(order)
        for name in order:
            started = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - started)
        rounds += 1
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def aa_ratio(medians: dict[str, float], name: str) -> float:
    """The control's ratio: ``name`` over its second session."""
    return medians[name] / medians[name + AA_SUFFIX]


def noisy(ratio: float) -> bool:
    return abs(ratio - 1) > AA_LIMIT
