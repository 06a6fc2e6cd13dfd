"""``ln2d bench-serve``: a real ``ln2d serve`` process under load, beside raw ONNX Runtime.

Scenarios: ``/v1/classify`` with a 224x224 PNG photo and v2 binary infer with one
``(1, C, H, W)`` tensor at each concurrency; an overload run (rejections and admitted requests
timed apart); and a soak run for resident-memory growth. The load generator (``loadgen``)
runs in this process, the server in its own.
"""

from __future__ import annotations

import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ln2d.serve.launcher import ServerProcess
from ln2d.serve.loadgen import LoadResult, http_request, run_load
from ln2d.serve.model import Model, ModelInfo


@dataclass(frozen=True)
class BenchOptions:
    model: Path
    concurrency: tuple[int, ...]
    seconds: float
    overload: int
    soak_requests: int
    server_args: tuple[str, ...]


def run(options: BenchOptions) -> dict:
    model = Model(options.model, "cpu", False, threads=1)
    report: dict = {"model": str(options.model), "raw_onnxruntime": _raw_ort(model, options)}
    requests = {
        "classify_png_224": _classify_request(),
        "v2_binary": _v2_request(model.info),
    }
    _progress(f"starting ln2d serve {options.model} {' '.join(options.server_args)}")
    with ServerProcess(options.model, ["--no-access-log", *options.server_args]) as server:
        rows = []
        for name, request in requests.items():
            for concurrency in options.concurrency:
                _progress(f"{name} at concurrency {concurrency} for {options.seconds:g} s")
                run_load(server.host, server.port, request, concurrency, 1.0)  # warm
                result = run_load(server.host, server.port, request, concurrency, options.seconds)
                rows.append({"scenario": name, "concurrency": concurrency, **_row(result)})
        report["rows"] = rows
        _progress(f"overload: v2_binary at concurrency {options.overload}")
        overload = run_load(
            server.host, server.port, requests["v2_binary"], options.overload, options.seconds
        )
        report["overload"] = {
            "concurrency": options.overload,
            "status_counts": overload.status_counts(),
            "admitted_200": overload.summary(200),
            "rejected_503": overload.summary(503),
            "failures": overload.failures,
        }
        report["soak"] = _soak(server, requests["v2_binary"], options.soak_requests)
        report["server_exit_code"] = server.stop()
    return report


def _raw_ort(model: Model, options: BenchOptions) -> dict:
    """Images/s of ``session.run`` alone, one thread, at batch 1 and 32."""
    out = {}
    for batch in (1, 32):
        _progress(f"raw onnxruntime, batch {batch}")
        x = np.random.default_rng(0).standard_normal((batch, *model.info.sample_shape))
        x = x.astype(np.float32)
        model.run(x)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < options.seconds / 2:
            model.run(x)
            runs += 1
        out[f"batch_{batch}_images_per_s"] = runs * batch / (time.perf_counter() - started)
    return out


def _classify_request() -> bytes:
    """A real photo (scikit-learn's china.jpg) resized to 224x224, as a PNG body."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    buffer = io.BytesIO()
    photo = Image.fromarray(load_sample_image("china.jpg")).resize((224, 224))
    photo.save(buffer, format="PNG")
    return http_request("POST", "/v1/classify", buffer.getvalue(), {"Content-Type": "image/png"})


def _v2_request(info: ModelInfo) -> bytes:
    tensor = np.random.default_rng(0).standard_normal((1, *info.sample_shape))
    data = tensor.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": info.input_name,
                    "shape": [1, *info.sample_shape],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": info.output_name, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return http_request(
        "POST",
        f"/v2/models/{info.name}/infer",
        header + data,
        {"Inference-Header-Content-Length": str(len(header))},
    )


def _soak(server: ServerProcess, request: bytes, total: int) -> dict:
    _progress(f"soak: {total} v2 requests at concurrency 32")
    run_load(server.host, server.port, request, 32, 2.0)  # reach the steady state first
    before = _rss_bytes(server.process.pid)
    result = run_load(server.host, server.port, request, 32, 600.0, total)
    after = _rss_bytes(server.process.pid)
    return {
        "requests": len(result.statuses),
        "status_counts": result.status_counts(),
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "growth_percent": 100 * (after - before) / before,
    }


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _row(result: LoadResult) -> dict:
    ok = result.summary(200)
    return {
        "req_per_s": ok["per_s"],
        "p50_ms": ok["p50_ms"],
        "p99_ms": ok["p99_ms"],
        "non_200": len(result.statuses) - ok["count"] + result.failures,
    }


def table(report: dict) -> str:
    raw = report["raw_onnxruntime"]
    lines = [
        f"raw ONNX Runtime (1 thread): {raw['batch_1_images_per_s']:,.0f} images/s at batch 1, "
        f"{raw['batch_32_images_per_s']:,.0f} at batch 32",
        "",
        "| scenario | concurrency | req/s | p50 ms | p99 ms | non-200 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['scenario']} | {row['concurrency']} | {row['req_per_s']:,.0f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['non_200']} |"
        )
    over = report["overload"]
    ok, busy = over["admitted_200"], over["rejected_503"]
    lines += [
        "",
        f"overload at {over['concurrency']} concurrent: {ok['count']} admitted "
        f"({ok['per_s']:,.0f}/s, p50 {ok['p50_ms']:.1f} ms, p99 {ok['p99_ms']:.1f} ms), "
        f"{busy['count']} rejected with 503 (p50 {busy['p50_ms']:.1f} ms, "
        f"p99 {busy['p99_ms']:.1f} ms), statuses {over['status_counts']}",
    ]
    soak = report["soak"]
    lines.append(
        f"soak: {soak['requests']} requests, RSS {soak['rss_before_mb']:.1f} -> "
        f"{soak['rss_after_mb']:.1f} MiB ({soak['growth_percent']:+.2f}%); "
        f"server exit code after SIGTERM: {report['server_exit_code']}"
    )
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(f"[bench-serve] {message}", file=sys.stderr, flush=True)
