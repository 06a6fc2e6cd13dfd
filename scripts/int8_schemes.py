"""INT8 schemes on ONNX Runtime's two x86 int8 paths: accuracy, agreement and cost.

The model (default: the `make demo` digits model) is quantized as `ln2d quantize` does it, with
each scheme (u8s7, u8s8, u8u8), per-tensor and per-channel, calibrated on the same 256 digits,
and every model is evaluated on the other 1,541 against the float model, on:

- this CPU (on the machine that wrote docs/benchmarks.md: AVX-512 with VNNI);
- an x86-64-v3 CPU without AVX-512 or VNNI (AVX2's vpmaddubsw path), by running the same
  Python under `qemu-x86_64 -cpu Haswell`: accuracy only, emulated time means nothing;
- with --instructions, valgrind's CPU (AVX2, no AVX-512, no VNNI): instructions per batch on
  that path, counted by callgrind (a stand-in for speed there: instructions, not cycles).

Speed on this CPU: median ms per batch (1 and 32 images, one thread, spinning off), all models
in shuffled rounds with an A/A control (the float model twice). Torch stays out of the timed
processes: every measurement runs in a worker subprocess that imports only onnxruntime.

    .venv/bin/python scripts/int8_schemes.py [MODEL.onnx] [--json OUT.json] [--instructions]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
QEMU_HASWELL = ["qemu-x86_64", "-cpu", "Haswell-v4,-pcid,-x2apic,-tsc-deadline,-invpcid,-spec-ctrl"]
VARIANTS = [(s, pc) for s in ("u8s7", "u8s8", "u8u8") for pc in (False, True)]
FLOAT = "fp32"


def name(scheme: str, per_channel: bool) -> str:
    return f"{scheme} {'per-channel' if per_channel else 'per-tensor'}"


def make_models(model: Path, folder: Path) -> None:
    """The float model, every variant and the evaluation split, written to ``folder``."""
    import onnx

    from ln2d.export.parity.inputs import model_inputs
    from ln2d.export.quantize import QuantizeOptions, quantize_model

    images, labels = model_inputs(model, "digits")
    order = np.random.default_rng(0).permutation(len(images))  # ln2d quantize's split
    calibration, evaluation = order[:256], order[256:]
    np.save(folder / "x.npy", images[evaluation])
    np.save(folder / "y.npy", labels[evaluation])
    (folder / f"{FLOAT}.onnx").write_bytes(model.read_bytes())
    for scheme, per_channel in VARIANTS:
        options = QuantizeOptions(per_channel=per_channel, progress=False, scheme=scheme)
        quantized = quantize_model(onnx.load(model), images[calibration], options)[0]
        onnx.save(quantized, folder / f"{name(scheme, per_channel)}.onnx")
        print(f"quantized {name(scheme, per_channel)}", file=sys.stderr)


# ---- the worker: onnxruntime and numpy only -------------------------------------------------


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def logits(model, x: np.ndarray) -> np.ndarray:
    feed = model.get_inputs()[0].name
    return np.concatenate([model.run(None, {feed: x[i : i + 64]})[0] for i in range(0, len(x), 64)])


def evaluate(folder: Path) -> dict:
    """Accuracy of every model, and each variant's drop and top-1 agreement against fp32."""
    from numpy._core._multiarray_umath import __cpu_features__ as cpu

    x, y = np.load(folder / "x.npy"), np.load(folder / "y.npy")
    reference = logits(session(folder / f"{FLOAT}.onnx"), x)
    results = {"cpu": [f for f in ("X86_V3", "X86_V4", "AVX512VNNI") if cpu.get(f)], "models": {}}
    for scheme, per_channel in VARIANTS:
        out = logits(session(folder / f"{name(scheme, per_channel)}.onnx"), x)
        drop = (reference.argmax(1) == y).mean() - (out.argmax(1) == y).mean()
        results["models"][name(scheme, per_channel)] = {
            "drop_points": 100 * float(drop),
            "agreement": float((out.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_vs_fp32": float(np.abs(out - reference).max()),
        }
    results["fp32_accuracy"] = float((reference.argmax(1) == y).mean())
    return results


def time_all(folder: Path, seconds: float) -> dict:
    """Median ms per batch of 1 and of 32 for fp32 (twice: the A/A control) and every variant."""
    sys.path.insert(0, str(ROOT))
    from ln2d.export.timing import AA_SUFFIX, interleaved

    x = np.load(folder / "x.npy")
    names = [FLOAT, *(name(s, pc) for s, pc in VARIANTS)]
    results = {}
    for batch in (1, 32):
        runners = {}
        for label in [*names, FLOAT + AA_SUFFIX]:
            model = session(folder / f"{label.removesuffix(AA_SUFFIX)}.onnx")
            feeds = {model.get_inputs()[0].name: x[:batch]}
            runners[label] = lambda model=model, feeds=feeds: model.run(None, feeds)
        results[str(batch)] = interleaved(runners, seconds)
    return results


def run_batches(folder: Path, label: str, runs: int) -> None:
    """Load every model (the same work in every counted process), run one ``runs`` times."""
    x = np.load(folder / "x.npy")[:32]
    models = {p.stem: session(p) for p in sorted(folder.glob("*.onnx"))}
    for _ in range(runs):
        models[label].run(None, {models[label].get_inputs()[0].name: x})


# ---- the parent ----------------------------------------------------------------------------


def worker(prefix: list[str], folder: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [*prefix, sys.executable, __file__, "--worker", str(folder), *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])}...: {done.stderr.strip()[-2000:]}")
    return done.stdout


def instructions(folder: Path, label: str, runs: int) -> int:
    """Instructions callgrind counts for a process that loads every model and runs ``label``."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        worker(prefix, folder, "--batches", label, "--runs", str(runs))
        totals = [line for line in out.read_text().splitlines() if line.startswith("totals:")]
        return int(totals[0].split()[1])


def instructions_per_batch(folder: Path, runs: int = 10) -> dict[str, float]:
    """callgrind on valgrind's CPU (AVX2, no AVX-512): (count with runs - count without) / runs."""
    base = instructions(folder, FLOAT, 0)
    labels = [FLOAT, *(name(s, pc) for s, pc in VARIANTS)]
    counts = {}
    for label in labels:
        counts[label] = (instructions(folder, label, runs) - base) / runs
        print(f"counted {label}: {counts[label] / 1e6:.1f} M instructions", file=sys.stderr)
    return counts


def table(report: dict) -> str:
    native, haswell = report["native"], report["haswell"]
    speed, counts = report["speed_ms"], report.get("instructions_per_batch_32")
    lines = [
        f"fp32 accuracy: {100 * native['fp32_accuracy']:.2f} % on this CPU "
        f"({' '.join(native['cpu'])}), "
        f"{100 * haswell['fp32_accuracy']:.2f} % as Haswell ({' '.join(haswell['cpu'])}); "
        f"A/A (fp32 twice): {report['aa']['1']:.3f} at batch 1, {report['aa']['32']:.3f} at 32",
        "",
        "| scheme | drop, AVX-512 VNNI | agreement | drop, AVX2 (Haswell) | agreement "
        "| ms, batch 1 | ms, batch 32 | x fp32 at 32 |"
        + (" M instr. / batch 32, AVX2 | x fp32 |" if counts else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if counts else ""),
    ]
    for label in [FLOAT, *(name(s, pc) for s, pc in VARIANTS)]:
        a, b = native["models"].get(label), haswell["models"].get(label)
        accuracy = (
            f"{a['drop_points']:+.2f} | {100 * a['agreement']:.2f} % | "
            f"{b['drop_points']:+.2f} | {100 * b['agreement']:.2f} %"
            if a
            else "| | |"
        )
        row = (
            f"| {label} | {accuracy} | {speed['1'][label]:.3f} | {speed['32'][label]:.3f} | "
            f"{speed['32'][label] / speed['32'][FLOAT]:.2f} |"
        )
        if counts:
            row += f" {counts[label] / 1e6:.1f} | {counts[label] / counts[FLOAT]:.2f} |"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, default=ROOT / "artifacts" / "model.onnx")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per model and batch")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions under valgrind"
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--time", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.batches:
            run_batches(args.worker, args.batches, args.runs)
        else:
            result = time_all(args.worker, args.time) if args.time else evaluate(args.worker)
            print(json.dumps(result))
        return 0
    if not args.model.is_file():
        raise SystemExit(f"{args.model} not found: run make demo, or name a model")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        make_models(args.model, folder)
        report = {
            "native": json.loads(worker([], folder)),
            "haswell": json.loads(worker(QEMU_HASWELL, folder)),
            "speed_ms": json.loads(worker([], folder, "--time", str(args.seconds))),
        }
        if args.instructions:
            report["instructions_per_batch_32"] = instructions_per_batch(folder)
    report["aa"] = {b: t[FLOAT] / t[FLOAT + " (A/A)"] for b, t in report["speed_ms"].items()}
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
