"""``make gpu-check``: everything the GPU path needs measured, in one command of at most eight
minutes on a GPU machine, written to one JSON and one Markdown table.

Steps, each a real ln2d command in its own process with its own time limit (a step that fails
or runs out of time is recorded, and the next one runs):

1. environment: Python, torch and its CUDA, onnxruntime and its providers, ``nvidia-smi -L``;
2. artifacts: the digits model trained, and exported for every target, fp32 and fp16;
3. provider_without_torch: a CUDA session opened in a process that never imports torch, as
   ``ln2d serve`` does: the active provider, or the loader's reason it did not come up;
4. serve: ``ln2d serve --provider cuda`` beside ``--provider cpu``, beside the CUDA server
   with ``--max-batch 1``, with ``--cuda-graphs`` and in an interpreter that hands the GIL
   over sooner, on the same model: a real classify request, then v2 binary at concurrency
   1/8/32 in a random order, with each server's own batch sizes and stage times per point,
   then py-spy's profile of the CUDA and the CPU server under load (``scripts/gpu_serving.py``);
5. model_run: the served model's run alone per batch size (plain, IO binding, CUDA graphs),
   and called as the server calls it (through its inference thread, beside a busy event
   loop, with a batch size that changes from call to call);
6. bench: ``ln2d bench --providers cuda --fp16``, the bench networks at batch 1/8/32, beside
   PyTorch eager on the same GPU;
7. parity: ``ln2d parity`` of every export on the provider;
8. second_timing: ``scripts/crosscheck_cuda.py``, parity and placement a second way;
9. cuda_tests: ``pytest -m cuda``;
10. bench_train: ``ln2d bench-train --device cuda``.

The order is the order of value: GPU minutes are few, and ``--budget`` ends the check in time
(each step's limit is cut to the time left; the steps that no longer fit are recorded as
skipped). The JSON and the table are rewritten after every step, so a call cut short still
brings back what was measured.

``--dry-run`` rehearses it on a machine without a GPU: the same steps on the CPU provider with
short timings, the CUDA-only ones recorded as skipped, so that GPU minutes are never spent on a
bug here. ``make test`` runs the dry run.

    python scripts/gpu_check.py --out artifacts/gpu-check [--work DIR] [--budget S] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpu_serving import SERVERS, model_run, serve

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("cpu", "cuda", "portable")
PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class Check:
    out: Path
    work: Path
    dry_run: bool
    deadline: float  # time.monotonic() at which the check must have ended
    skip: frozenset[str] = frozenset()
    checkpoint: Path | None = None  # a trained digits checkpoint; None: the artifacts step trains

    @property
    def provider(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    @property
    def seconds(self) -> float:
        return 0.2 if self.dry_run else 0.5

    def model(self, target: str, precision: str = "fp32") -> Path:
        """The digits model the artifacts step exports for ``target`` in ``precision``."""
        return self.work / f"digits-{target}-{precision}.onnx"

    @property
    def served_model(self) -> Path:
        """The one the serving steps run: exported for the provider's target."""
        return self.model(self.provider)

    def limit(self, seconds: float) -> float:
        """A step's own time limit, cut to the time the check has left."""
        return max(1.0, min(seconds, self.deadline - time.monotonic()))

    def ln2d(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ln2d", *args], capture_output=True,
                              text=True, timeout=self.limit(timeout))  # fmt: skip


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def outcome(done: subprocess.CompletedProcess, **found) -> dict:
    """A command's step result: ok, or failed with the end of what it wrote to stderr."""
    if done.returncode == 0:
        return {"status": "ok", **found}
    return {"status": "failed", "exit": done.returncode, "stderr": tail(done.stderr, 8), **found}


def environment(check: Check) -> dict:
    probe = (
        "import json, platform, onnxruntime as ort\n"
        "found = {'python': platform.python_version(), 'onnxruntime': ort.__version__,"
        " 'providers': ort.get_available_providers()}\n"
        "try:\n import torch\n found.update(torch=torch.__version__, torch_cuda=torch.version.cuda,"
        " gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)\n"
        "except ImportError:\n found['torch'] = None\n"
        "print(json.dumps(found))"
    )
    found = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                      text=True, timeout=60, check=True).stdout)  # fmt: skip
    try:
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        found["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except FileNotFoundError:
        found["nvidia_smi"] = "no nvidia-smi"
    return {"status": "ok", **found, "machine": platform.machine()}


def artifacts(check: Check) -> dict:
    check.work.mkdir(parents=True, exist_ok=True)
    checkpoint = check.checkpoint or check.work / "digits.safetensors"
    if check.checkpoint is None:
        trained = check.ln2d("train", "--out", str(checkpoint), "--no-progress", timeout=120)
        if trained.returncode != 0:
            return {"status": "failed", "error": tail(trained.stderr)}
    made, refused = [], {}
    for target in TARGETS:
        for precision in PRECISIONS:
            path = check.model(target, precision)
            args = ["export", str(checkpoint), "-o", str(path), "--target", target]
            exported = check.ln2d(*args, "--precision", precision, timeout=120)
            if exported.returncode == 0:
                made.append(path.name)
            else:
                refused[path.name] = tail(exported.stderr, 1)
    return {"status": "ok" if made else "failed", "models": made, "refused": refused}


def provider_without_torch(check: Check) -> dict:
    probe = (
        "import json, sys\n"
        "from ln2d.runtime import ProviderNotActive, SessionSettings, open_session\n"
        "try:\n"
        "    session = open_session(sys.argv[1], SessionSettings('cuda'))\n"
        "    found = {'active': session.get_providers()[0]}\n"
        "except ProviderNotActive as error:\n"
        "    found = {'error': str(error)}\n"
        "found['torch_imported'] = 'torch' in sys.modules\n"
        "print(json.dumps(found))"
    )
    model = check.model("cuda")
    done = subprocess.run([sys.executable, "-c", probe, str(model)], capture_output=True,
                          text=True, timeout=check.limit(120))  # fmt: skip
    if done.returncode != 0:
        return {"status": "failed", "error": tail(done.stderr)}
    found = json.loads(done.stdout.strip().splitlines()[-1])
    ok = found.get("active") == "CUDAExecutionProvider" and not found["torch_imported"]
    status = "ok" if ok else ("skipped" if check.dry_run else "failed")
    return {"status": status, **found}


def parity(check: Check) -> dict:
    """Every export's parity record (PyTorch's outputs, recorded where it was exported)
    replayed on the provider, in one torch-free process."""
    models = sorted(check.work.glob("digits-*.onnx"))
    report = check.work / "parity.json"
    done = check.ln2d("parity", *map(str, models), "--providers", check.provider,
                      "--json", str(report), timeout=120)  # fmt: skip
    if not report.is_file():
        return outcome(done)
    replays = json.loads(report.read_text())
    rows = {
        Path(r["model"]).stem: {"passed": r["passed"], **r["replays"].get(check.provider, {})}
        for r in (replays if isinstance(replays, list) else [replays])
    }
    return outcome(done, models=rows)


def bench(check: Check) -> dict:
    report = check.out / "bench.json"
    networks = "simple" if check.dry_run else "simple,convnext-atto"
    args = ["bench", "--model", networks, "--providers", check.provider,
            "--seconds", str(check.seconds), "--json", str(report), "--no-progress"]  # fmt: skip
    # One spatial size (32) for SimpleLN_CNN on the GPU: three would triple the step's time.
    args += (
        ["--batch", "1"] if check.dry_run else ["--batch", "1,8,32", "--spatial", "32", "--fp16"]
    )
    done = check.ln2d(*args, timeout=240)
    return outcome(done, json=report.name, table=tail(done.stdout, 40))


def bench_train(check: Check) -> dict:
    report = check.out / "bench-train.json"
    done = check.ln2d("bench-train", "--device", check.provider, "--networks", "simple",
                "--seconds", str(check.seconds), "--no-compile", "--json", str(report),
                "--no-progress", timeout=120)  # fmt: skip
    return outcome(done, json=report.name, table=tail(done.stdout, 20))


def cuda_tests(check: Check) -> dict:
    # Only the files that hold CUDA tests: collecting the whole suite takes most of a minute.
    files = [str(p) for p in (ROOT / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text()]
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p",
                           "no:cacheprovider", *files], capture_output=True,
                          text=True, timeout=check.limit(300), cwd=ROOT)  # fmt: skip
    if done.returncode in (0, 5):  # 5: none collected
        return {"status": "ok", "summary": tail(done.stdout, 1)}
    failures = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"status": "failed", "summary": tail(done.stdout, 1), "failures": failures,
            "output": tail(done.stdout, 40)}  # fmt: skip


def second_timing(check: Check) -> dict:
    if check.dry_run:
        return {"status": "skipped", "reason": "needs the CUDA provider"}
    report = check.out / "crosscheck-cuda.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "crosscheck_cuda.py"),
                           "--json", str(report)], capture_output=True, text=True,
                          timeout=check.limit(180))  # fmt: skip
    return outcome(done, summary=tail(done.stdout))


STEPS: list[tuple[str, Callable[[Check], dict]]] = [
    ("environment", environment),
    ("artifacts", artifacts),
    ("provider_without_torch", provider_without_torch),
    ("serve", serve),
    ("model_run", model_run),
    ("bench", bench),
    ("parity", parity),
    ("second_timing", second_timing),
    ("cuda_tests", cuda_tests),
    ("bench_train", bench_train),
]
MINIMUM_STEP_SECONDS = 20


def run(check: Check, report: Callable[[dict], None]) -> dict:
    """Every step in order, ``report`` called with the results so far after each."""
    results: dict = {}
    for name, step in STEPS:
        started = time.monotonic()
        if name in check.skip:
            results[name] = {"status": "skipped", "reason": "--skip", "seconds": 0.0}
            continue
        if check.deadline - started < MINIMUM_STEP_SECONDS:
            results[name] = {"status": "skipped", "reason": "out of time", "seconds": 0.0}
            continue
        print(f"[gpu-check] {name}", file=sys.stderr, flush=True)
        try:
            result = step(check)
        except Exception as error:  # a step's failure is a finding, not the end of the check
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        results[name] = {**result, "seconds": round(time.monotonic() - started, 1)}
        print(f"[gpu-check] {name}: {json.dumps(results[name])[:2000]}", file=sys.stderr,
              flush=True)  # fmt: skip
        report({"dry_run": check.dry_run, "steps": results})
    return {"dry_run": check.dry_run, "steps": results}


def markdown(report: dict) -> str:
    lines = ["| step | status | seconds | result |", "|---|---|---:|---|"]
    for name, result in report["steps"].items():
        shown = {k: v for k, v in result.items() if k not in ("status", "seconds", "table", "rows")}
        lines.append(f"| {name} | {result['status']} | {result['seconds']} | "
                     f"{json.dumps(shown)[:300]} |")  # fmt: skip
    steps = report["steps"]
    serve_rows = steps.get("serve", {}).get("rows", [])
    if serve_rows:
        lines += [
            "",
            "| concurrency | GPU server req/s | CPU server req/s | GPU, batches of 1 | GPU, GIL "
            "switch 0.5 ms | GPU, CUDA graphs | GPU p99 ms | CPU p99 ms | GPU images/run | "
            "GPU server ms in queue / run / total |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in serve_rows:
            gpu, cpu = row["gpu"], row["cpu"]
            rates = " | ".join(
                f"{row[name]['per_s']:,.0f}" if name in row else "-" for name in SERVERS
            )
            stages = " / ".join(
                f"{gpu['served'][f'{s}_ms']:.1f}" for s in ("queue", "inference", "total")
            )
            lines.append(f"| {row['concurrency']} | {rates} | {gpu['p99_ms']:.1f} | "
                         f"{cpu['p99_ms']:.1f} | {gpu['served']['images_per_run']:.1f} | "
                         f"{stages} |")  # fmt: skip
    calls = steps.get("model_run", {}).get("calls_median_ms", {})
    if calls:
        names = list(next(iter(calls.values())))
        lines += ["", "| provider | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for provider, medians in calls.items():
            lines.append(f"| {provider} | " + " | ".join(f"{medians[n]:.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "artifacts" / "gpu-check",
        help="where gpu-check.json, gpu-check.md and each step's JSON go",
    )
    parser.add_argument(
        "--work", type=Path, help="where the models and parity reports go (default: OUT/work)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=480.0,
        help="seconds the whole check may take (default: 480)",
    )
    parser.add_argument(
        "--skip",
        type=lambda text: set(text.split(",")),
        default=set(),
        help="comma list of steps not to run this time (their results were kept from before)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="a trained digits checkpoint (default: train one)"
    )
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    unknown = args.skip - {name for name, _ in STEPS}
    if unknown:
        parser.error(f"--skip: no step named {', '.join(sorted(unknown))}")
    deadline = time.monotonic() + args.budget
    check = Check(args.out, args.work or args.out / "work", args.dry_run, deadline,
                  frozenset(args.skip), args.checkpoint)  # fmt: skip

    def write(report: dict) -> None:
        (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2))
        (args.out / "gpu-check.md").write_text(markdown(report))

    report = run(check, write)
    write(report)
    print(markdown(report))
    return 1 if any(r["status"] == "failed" for r in report["steps"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
