"""``ln2d bench-fuse``: the time and peak memory of ``ln2d fuse`` on models of any size.

Each run is a fresh ``ln2d fuse`` process, timed from start to exit; its peak resident memory is
the kernel's own count for that process alone (``wait4``'s ``ru_maxrss``), set against the size
of the model's weights. Runs alternate between the models, and the table carries an A/A
control: the median of the odd-numbered runs of a model against that of its even-numbered ones.
``--generate GB`` first writes a ConvNeXt-like model of that size (export/large_model.py), the
way to measure a model past protobuf's 2 GB where none can be downloaded.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ln2d.errors import UserError
from ln2d.export.onnx_io import read_graph, tensor_bytes


@dataclass(frozen=True)
class FuseRun:
    seconds: float
    peak_bytes: int
    exit_code: int
    stderr: str


# Starts the command and prints its peak resident memory (KiB). The measurement is taken
# from this small parent: a child's ru_maxrss includes its parent's resident set at the fork,
# which for a test or bench process holding torch would be most of the number.
_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def fuse_once(model: Path, output: Path, *flags: str) -> FuseRun:
    """One ``ln2d fuse`` process: wall time, its own peak resident memory, exit code."""
    command = [sys.executable, "-m", "ln2d", "fuse", str(model), "-o", str(output), *flags]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *command], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    peak_kib = int(done.stdout.strip() or 0)
    return FuseRun(seconds, peak_kib * 1024, done.returncode, done.stderr)


def weights_bytes(model: Path) -> int:
    return tensor_bytes(read_graph(model))


def run(models: list[Path], repeats: int, flags: tuple[str, ...] = (), progress: bool = True):
    """Every model fused ``repeats`` times, alternating; a row per model."""
    runs: dict[Path, list[FuseRun]] = {m: [] for m in models}
    with tempfile.TemporaryDirectory(prefix="ln2d-bench-fuse-") as folder:
        order = [m for _ in range(repeats) for m in models]
        for model in tqdm(order, desc="ln2d fuse", disable=not progress):
            result = fuse_once(model, Path(folder) / model.name, "--no-progress", *flags)
            if result.exit_code != 0:
                last = result.stderr.strip().splitlines()[-1:] or ["no message"]
                raise UserError(f"ln2d fuse {model} exited {result.exit_code}: {last[0]}")
            runs[model].append(result)
    return [_row(model, results) for model, results in runs.items()]


def _row(model: Path, results: list[FuseRun]) -> dict:
    size = weights_bytes(model)
    seconds = [r.seconds for r in results]
    peak = max(r.peak_bytes for r in results)
    odd, even = seconds[0::2], seconds[1::2]
    return {
        "model": str(model),
        "weights_bytes": size,
        "runs": [asdict(r) | {"stderr": None} for r in results],
        "median_s": statistics.median(seconds),
        "peak_rss_bytes": peak,
        "peak_over_weights": peak / size,
        "aa_ratio": statistics.median(odd) / statistics.median(even) if even else None,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | weights | runs | median s | peak RSS | peak / weights | A/A (odd/even runs) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        aa = f"{row['aa_ratio']:.2f}" if row["aa_ratio"] is not None else "n/a (one run)"
        lines.append(
            f"| {Path(row['model']).name} | {row['weights_bytes'] / 2**20:,.0f} MiB "
            f"| {len(row['runs'])} | {row['median_s']:.1f} "
            f"| {row['peak_rss_bytes'] / 2**20:,.0f} MiB | {row['peak_over_weights']:.2f}x | {aa} |"
        )
    return "\n".join(lines)
