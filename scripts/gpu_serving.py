"""``make gpu-check``'s two serving steps: where a CUDA server's time goes.

On 2026-12-04 an H200 served the digits model at 281-410 req/s at concurrency 32 against the
CPU server's 1,720-1,950, while the model's run alone took 0.22-0.28 ms. Its requests spent
about 100 ms in the server and batches held 1.6 images. These steps measure the candidates:

- serve: the CUDA server beside the CPU one, beside a CUDA server with batches of one, beside
  one whose interpreter hands the GIL over every 0.5 ms instead of 5 ms (a thread that
  returns from a run waits up to the switch interval for a busy event loop to let go of it),
  and beside one running CUDA graphs (``--cuda-graphs``).
  Each point carries the server's own stage times for that point (its /metrics before and
  after), and both servers are profiled under load by py-spy: Python stacks without stopping
  the process, then native stacks (where the threads wait: the GIL, CUDA, epoll).
- model_run: the served ``Model.run`` alone per batch size: plain, with IO binding, and as a
  captured CUDA graph per size (``static_batches``); then, on the provider and on the CPU, a
  run called directly, through a one-thread pool as the batcher calls it, through the pool
  while this thread keeps the GIL busy as a loaded event loop does, and batches whose size
  changes on every call against a fixed size.
"""

from __future__ import annotations

import functools
import itertools
import random
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpu_check import Check

ROOT = Path(__file__).resolve().parents[1]
# serve's servers, in the report's column order (gpu_graphs: not in a dry run)
SERVERS = ("gpu", "cpu", "gpu_unbatched", "gpu_switch", "gpu_graphs")
CONCURRENCY = (1, 8, 32)
PROFILED_CONCURRENCY = 8  # where the CUDA server lost most on 2026-12-04
SWITCH_INTERVAL_S = 5e-4
# ``ln2d serve`` in an interpreter that hands the GIL over sooner (sys.setswitchinterval).
SWITCHED_SERVE = (
    f"import sys; sys.setswitchinterval({SWITCH_INTERVAL_S}); from ln2d.cli import main; "
    "sys.exit(main(['serve', *sys.argv[1:]]))"
)


def serve(check: Check) -> dict:
    sys.path.insert(0, str(ROOT))
    import httpx

    from ln2d.serve.model import Model
    from ln2d.serve.tools.bench_serve import _v2_request
    from ln2d.serve.tools.launcher import LaunchError, ServerProcess
    from ln2d.serve.tools.loadgen import run_load

    model = check.served_model
    request = _v2_request(Model(model, "cpu", False, 1).info)
    gpu = ["--no-access-log", "--provider", check.provider]
    switched = [sys.executable, "-c", SWITCHED_SERVE]
    servers = {
        "gpu": ServerProcess(model, gpu),
        "cpu": ServerProcess(model, ["--no-access-log", "--provider", "cpu"]),
        "gpu_unbatched": ServerProcess(model, [*gpu, "--max-batch", "1"]),
        "gpu_switch": ServerProcess(model, gpu, command=switched),
    }
    refused = {}
    if not check.dry_run:  # ONNX Runtime has no CPU graphs: ln2d serve refuses the flag there
        try:  # a model ONNX Runtime cannot capture is refused at load: a finding, not the end
            servers["gpu_graphs"] = ServerProcess(model, [*gpu, "--cuda-graphs"])
        except LaunchError as error:
            refused["gpu_graphs"] = str(error)[-1000:]
    seconds = 4 * check.seconds  # 2 s a point on the GPU: 0.5 s gave rough figures
    try:
        png = _digit_png()
        answer = httpx.post(f"{servers['gpu'].url}/v1/classify", content=png,
                            headers={"content-type": "image/png"}).json()  # fmt: skip
        rows = []
        for concurrency in CONCURRENCY:
            measured = {}
            for name in random.sample(list(servers), len(servers)):
                server = servers[name]
                run_load(server.host, server.port, request, concurrency, seconds / 4)
                before = _metric_sums(server.url)
                result = run_load(server.host, server.port, request, concurrency, seconds)
                answered = result.summary(200)
                measured[name] = {**answered, "non_200": len(result.statuses) - answered["count"],
                                  "served": _served(before, _metric_sums(server.url))}  # fmt: skip
            rows.append({"concurrency": concurrency, **measured})
        profiles = {
            f"{name}_{kind}": _profile(servers[name], kind, check.out, seconds, request)
            for name in ("gpu", "cpu")
            for kind in ("python", "native")
        }
    finally:
        exits = {name: server.stop() for name, server in servers.items()}
    ok = answer.get("provider") == (
        "CPUExecutionProvider" if check.dry_run else "CUDAExecutionProvider"
    )
    return {"status": "ok" if ok else "failed", "provider": answer.get("provider"),
            "rows": rows, "profiles": profiles, "refused": refused,
            "exit_codes": exits}  # fmt: skip


def _profile(server, kind: str, out: Path, seconds: float, request: bytes) -> dict:
    """py-spy's record of ``server`` under load at PROFILED_CONCURRENCY, in raw (collapsed)
    form under ``out``, summed up per thread. ``python``: without stopping the process;
    ``native``: C frames too, which needs py-spy to stop it at each sample, so fewer samples."""
    from ln2d.serve.tools.loadgen import run_load

    spy = shutil.which("py-spy")
    if spy is None:
        return {"error": "py-spy is not installed"}
    path = out / f"py-spy-{server.port}-{kind}.txt"
    mode = ["--nonblocking", "--rate", "200"] if kind == "python" else ["--native", "--rate", "50"]
    try:
        recorder = subprocess.Popen(
            [spy, "record", "--pid", str(server.process.pid), "--duration",
             str(max(1, int(seconds))), "--format", "raw", "--output", str(path), "--threads",
             "--idle", *mode],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    except OSError as error:
        return {"error": f"py-spy did not start: {error}"}
    run_load(server.host, server.port, request, PROFILED_CONCURRENCY, seconds + 1)
    try:
        _, errors = recorder.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # the rows measured before must not be lost to it
        recorder.kill()
        return {"error": "py-spy did not finish within 60 s"}
    if recorder.returncode != 0 or not path.is_file():
        return {"error": errors.strip()[-500:] or f"py-spy exited {recorder.returncode}"}
    return {"file": path.name, **_threads(path.read_text())}


def _threads(raw: str, top: int = 6) -> dict:
    """Per thread, its samples and where it was found most: its innermost Python frame and,
    in a native profile, the C frame under it (a lock, a CUDA call, epoll)."""
    leaves: dict[str, Counter] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        python = next((frame for frame in reversed(frames) if ".py:" in frame), frames[-1])
        where = python if python == frames[-1] else f"{python} > {frames[-1]}"
        leaves.setdefault(frames[0], Counter())[where] += int(count)
    threads = {}
    for thread, counts in leaves.items():
        total = sum(counts.values())
        shares = [[frame, round(n / total, 3)] for frame, n in counts.most_common(top)]
        threads[thread] = {"samples": total, "top": shares}
    return {"samples": sum(t["samples"] for t in threads.values()), "threads": threads}


def _metric_sums(url: str) -> dict[str, float]:
    """The sums and counts of a server's histograms (its /metrics), by name and stage."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_count")):
                key = sample.name + "|" + sample.labels.get("stage", "")
                sums[key] = sums.get(key, 0.0) + sample.value
    return sums


def _served(before: dict[str, float], after: dict[str, float]) -> dict:
    """The server's own account of the load between two /metrics readings: mean images per
    model run, and mean ms per stage of a request (NaN for a stage it did not see)."""
    sums = {key: value - before.get(key, 0.0) for key, value in after.items()}
    means = {"images_per_run": _mean(sums, "ln2d_batch_size", "")}
    for stage in ("decode", "queue", "inference", "total"):
        means[f"{stage}_ms"] = 1e3 * _mean(sums, "ln2d_stage_seconds", stage)
    return means


def _mean(sums: dict[str, float], name: str, stage: str) -> float:
    count = sums.get(f"{name}_count|{stage}", 0.0)
    return sums.get(f"{name}_sum|{stage}", 0.0) / count if count else float("nan")


def _digit_png() -> bytes:
    from tests.images import digit, png

    return png(digit(0)[0])


def model_run(check: Check) -> dict:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from ln2d.export.timing import interleaved
    from ln2d.serve.model import Model

    path = check.served_model
    sizes = (1, 2, 8, 32)
    models = {name: Model(path, check.provider, False, 0, io_binding=name == "bound")
              for name in ("bound", "plain")}  # fmt: skip
    # On CUDA one captured graph per size (on the CPU the same static path without capture)
    refused = {}
    try:
        models["graphs"] = Model(path, check.provider, False, 0, static_batches=sizes)
        models["graphs"].warm_up(list(sizes))
    except Exception as error:  # onnxruntime's own errors: capture refused is a finding
        refused["graphs"] = f"{type(error).__name__}: {error}"[-1000:]
        models.pop("graphs", None)
    shape = models["bound"].info.sample_shape
    rows = []
    for size in sizes:
        batch = np.random.default_rng(0).standard_normal((size, *shape)).astype(np.float32)
        runners = {name: functools.partial(model.run, batch) for name, model in models.items()}
        rows.append({"batch": size, **interleaved(runners, check.seconds)})
    # The server's own settings: one inference thread.
    calls = {provider: _calls(Model(path, provider, False, 1), check.seconds)
             for provider in dict.fromkeys((check.provider, "cpu"))}  # fmt: skip
    if "graphs" in models:
        models["graphs"].close()
    return {"status": "ok", "median_ms": rows, "calls_median_ms": calls, "refused": refused}


def _calls(model, seconds: float) -> dict[str, float]:
    """Median ms of one run called as the server calls it, and of a run whose batch size
    differs from the last one's."""
    import numpy as np

    from ln2d.export.timing import interleaved

    rng = np.random.default_rng(0)
    batches = {size: rng.standard_normal((size, *model.info.sample_shape)).astype(np.float32)
               for size in range(1, 9)}  # fmt: skip
    sizes = [int(size) for _ in range(100) for size in rng.permutation(list(batches))]
    mixed = itertools.cycle(sizes)
    pool = ThreadPoolExecutor(1)
    try:
        return interleaved(
            {
                "direct": lambda: model.run(batches[2]),
                "pool": lambda: pool.submit(model.run, batches[2]).result(),
                "pool_busy_gil": lambda: _busy_until(pool.submit(model.run, batches[2])),
                "batch_4": lambda: model.run(batches[4]),
                "batch_1_to_8_mixed": lambda: model.run(batches[next(mixed)]),
            },
            seconds,
        )
    finally:
        pool.shutdown()


def _busy_until(future: Future) -> None:
    """Wait as a loaded event loop does: running Python, so holding the GIL, between looks."""
    while not future.done():
        sum(range(200))
