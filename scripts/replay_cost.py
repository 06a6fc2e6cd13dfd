"""What replaying a model's parity record costs `ln2d serve` at load, against the rest of the
load: opening the session and warming up every batch size.

Models: the digits model (fp32 and its int8 twin, if given) and the ConvNeXt-atto-like
network at 224x224 with random weights, exported by `ln2d export`'s own `export_module`, so it
carries a record of eight 224x224 crops of the sample photos. Each model is loaded ROUNDS times
in a torch-free worker subprocess exactly as the server loads it (`ln2d.serve.model.Model`,
warm-up of batch sizes 1..32, `Model.replay`), with one intra-op thread, and the medians are
printed as a table (and JSON with --json).

    .venv/bin/python scripts/replay_cost.py [artifacts/model.onnx ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 5


def convnext_atto(folder: Path) -> Path:
    import torch

    from ln2d.export.bench_models import NETWORKS, build
    from ln2d.export.onnx_export import export_module

    path = folder / "convnext-atto.onnx"
    network = build(NETWORKS["convnext-atto"], 3).eval()
    preprocessing = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    export_module(network, torch.zeros(2, 3, 224, 224), path, preprocessing=preprocessing)
    return path


def measure(path: Path) -> dict:
    """One load as the server does it: (open, warm-up, replay) seconds, and the replay."""
    from ln2d.serve.model import Model

    started = time.perf_counter()
    model = Model(path, "cpu", cpu_fallback=False, threads=1)
    opened = time.perf_counter()
    model.warm_up(list(range(1, 33)))
    warmed = time.perf_counter()
    replay = model.replay()
    replayed = time.perf_counter()
    return {
        "open_s": opened - started,
        "warm_up_s": warmed - opened,
        "replay_s": replayed - warmed,
        "samples": replay.record.samples,
        "passed": replay.passed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker)))
        return 0
    models = args.models or [ROOT / "artifacts" / "model.onnx"]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for path in [*models, convnext_atto(Path(scratch))]:
            runs = []
            for _ in range(ROUNDS):
                done = subprocess.run(
                    [sys.executable, __file__, "--worker", str(path)],
                    capture_output=True, text=True, check=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )  # fmt: skip
                runs.append(json.loads(done.stdout))
            results[path.name] = {
                key: statistics.median(r[key] for r in runs)
                for key in ("open_s", "warm_up_s", "replay_s")
            } | {"samples": runs[0]["samples"], "passed": all(r["passed"] for r in runs)}
    print("| model | open (ms) | warm-up 1..32 (ms) | replay (ms) | inputs | replay / load |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        load = r["open_s"] + r["warm_up_s"] + r["replay_s"]
        print(
            f"| {name} | {1e3 * r['open_s']:.1f} | {1e3 * r['warm_up_s']:.1f} | "
            f"{1e3 * r['replay_s']:.1f} | {r['samples']} | {100 * r['replay_s'] / load:.1f} % |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
