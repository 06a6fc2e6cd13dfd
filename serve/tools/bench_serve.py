"""``ln2d bench-serve``: a real ``ln2d serve`` process under load, beside a plain endpoint.

The baseline is what most people would write first: FastAPI + uvicorn + ONNX Runtime, one
handler that decodes and runs the model inline (``plain_app``). It serves the same model with
the same decoding and inference threads, so that the ratios measure the serving design alone.
Both servers run at once in their own processes; each point times them one after the other in
a random order, and an A/A row times the baseline twice, to show the noise.

Scenarios: ``/v1/classify`` with a 224x224 PNG photo, a 12-megapixel JPEG, and eight PNGs in
one multipart request (ln2d against the baseline); v2 binary infer (ln2d alone); overload runs
(rejections and admitted requests timed apart), with clients that retry at once and clients
that honour Retry-After; gRPC ``ModelInfer`` against v2 binary HTTP (when grpcio is
installed); a soak run for resident-memory growth; two models in one server (a
repository of two copies of the model): each alone and both at once, and one overloaded
beside the other. The load generator (``loadgen``) runs in this process.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request

from ln2d.serve import images
from ln2d.serve.model import Model, ModelInfo
from ln2d.serve.registry import model_threads
from ln2d.serve.settings import Settings
from ln2d.serve.tools.launcher import ServerProcess
from ln2d.serve.tools.loadgen import LoadResult, http_request, run_load

PLAIN_MODEL = "LN2D_BENCH_PLAIN_MODEL"  # the variable that tells plain_app what to serve


@dataclass(frozen=True)
class BenchOptions:
    model: Path
    concurrency: tuple[int, ...]
    seconds: float
    overload: int
    soak_requests: int
    server_args: tuple[str, ...]


def plain_app() -> FastAPI:
    """The baseline endpoint (a uvicorn ``--factory``): decode and run inline, nothing else."""
    settings = Settings(model_path=Path(os.environ[PLAIN_MODEL]))
    model = Model(settings.model_path, "cpu", False, model_threads(settings, max_models=1))
    app = FastAPI()

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            async with request.form() as form:
                blobs = [await upload.read() for upload in form.getlist("file")]
        else:
            blobs = [await request.body()]
        batch = np.stack([images.decode(blob, model.info, settings.max_pixels) for blob in blobs])
        return {"predictions": model.run(batch).argmax(axis=1).tolist()}

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    return app


def run(options: BenchOptions) -> dict:
    model = Model(options.model, "cpu", False, threads=1)
    report: dict = {"model": str(options.model), "raw_onnxruntime": _raw_ort(model, options)}
    classify = {name: make() for name, make in CLASSIFY_SCENARIOS.items()}
    v2 = _v2_request(model.info)
    _progress(f"starting ln2d serve {options.model} {' '.join(options.server_args)}")
    grpc_flag = ["--grpc-port", "0"] if _has_grpc() else []
    ln2d = ServerProcess(options.model, ["--no-access-log", *grpc_flag, *options.server_args])
    _progress("starting the plain FastAPI + ONNX Runtime endpoint")
    with ln2d, _plain_server(options.model) as plain:
        servers = {"ln2d": ln2d, "plain": plain}
        rows = []
        for name, request in classify.items():
            for concurrency in options.concurrency:
                rows.append(_compare(name, request, concurrency, servers, options.seconds))
        report["rows"] = rows
        _progress("A/A control: the plain endpoint twice, classify_png_224 at concurrency 1")
        same = {"plain": plain, "plain again": plain}
        report["a_a"] = _compare(
            "classify_png_224", classify["classify_png_224"], 1, same, options.seconds
        )
        report["v2_rows"] = [
            {
                "scenario": "v2_binary",
                "concurrency": c,
                **_row(_measure(ln2d, v2, c, options.seconds)),
            }
            for c in options.concurrency
        ]
        report["grpc"] = _grpc_against_http(ln2d, v2, model.info, options)
        report["overload"] = [
            _overload(ln2d, v2, options, honour_retry_after) for honour_retry_after in (False, True)
        ]
        report["soak"] = _soak(ln2d, v2, options.soak_requests)
        report["server_exit_code"] = ln2d.stop()
    report["two_models"] = _two_models(options, model.info)
    return report


def _has_grpc() -> bool:
    try:
        import grpc  # noqa: F401
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        return False
    return True


def _grpc_against_http(
    server: ServerProcess, http_request: bytes, info: ModelInfo, options: BenchOptions
) -> dict | None:
    """gRPC ``ModelInfer`` against v2 binary HTTP on the same server and tensor: at each
    concurrency both in a random order, with this process's CPU per request (the two load
    generators differ); an A/A row times gRPC twice at the highest concurrency."""
    if server.grpc_port is None:
        return None
    from ln2d.serve.tools.grpc_loadgen import run_grpc_load

    message = _grpc_request(info)
    protocols = {
        "grpc": lambda c: run_grpc_load(server.host, server.grpc_port, message, c, options.seconds),
        "http_binary": lambda c: run_load(
            server.host, server.port, http_request, c, options.seconds
        ),
    }

    def measure(protocol: str, concurrency: int) -> dict:
        protocols[protocol](concurrency)  # warm, and the same length as the measurement
        client, served = os.times(), _cpu_seconds(server.process.pid)
        result = protocols[protocol](concurrency)
        after, count = os.times(), max(1, len(result.statuses))
        client_s = (after.user - client.user) + (after.system - client.system)
        server_s = _cpu_seconds(server.process.pid) - served
        return {
            **_row(result),
            "client_cpu_us": client_s / count * 1e6,
            "server_cpu_us": server_s / count * 1e6,
        }

    rows = []
    for concurrency in options.concurrency:
        order = random.sample(list(protocols), len(protocols))
        _progress(f"gRPC against HTTP binary at concurrency {concurrency}: {' then '.join(order)}")
        measured = {protocol: measure(protocol, concurrency) for protocol in order}
        ratio = measured["grpc"]["req_per_s"] / measured["http_binary"]["req_per_s"]
        rows.append({"concurrency": concurrency, **measured, "req_per_s_ratio": ratio})
    top = max(options.concurrency)
    _progress(f"A/A control: gRPC twice at concurrency {top}")
    first, second = measure("grpc", top), measure("grpc", top)
    a_a = {"concurrency": top, "grpc": first, "grpc again": second,
           "req_per_s_ratio": first["req_per_s"] / second["req_per_s"]}  # fmt: skip
    return {"rows": rows, "a_a": a_a}


def _grpc_request(info: ModelInfo):
    from tritonclient.grpc import service_pb2

    tensor = np.random.default_rng(0).standard_normal((1, *info.sample_shape)).astype("<f4")
    message = service_pb2.ModelInferRequest(model_name=info.name)
    message.inputs.add(name=info.input_name, datatype="FP32", shape=list(tensor.shape))
    message.raw_input_contents.append(tensor.tobytes())
    return message


def _two_models(options: BenchOptions, info: ModelInfo) -> dict:
    """A repository of two copies of the model, ``a`` and ``b``, in one ln2d serve: at each
    concurrency, ``b`` alone and both at once (in a random order); then ``a`` overloaded beside
    ``b`` at concurrency 1, by clients that retry at once and by clients that honour
    Retry-After, beside ``b`` alone."""
    with tempfile.TemporaryDirectory() as repo:
        for name in ("a", "b"):
            (Path(repo) / name / "1").mkdir(parents=True)
            shutil.copyfile(options.model, Path(repo) / name / "1" / "model.onnx")
        requests = {name: _v2_request(info, name) for name in ("a", "b")}
        _progress(f"two models: starting ln2d serve on a repository of two copies ({repo})")
        with ServerProcess(Path(repo), ["--no-access-log", *options.server_args]) as server:
            rows = []
            for concurrency in options.concurrency:
                loads = {"b alone": {"b": concurrency}, "a and b": {"a": concurrency,
                                                                    "b": concurrency}}  # fmt: skip
                for label in random.sample(list(loads), len(loads)):
                    _progress(f"two models: {label} at concurrency {concurrency}")
                    measured = _together(server, requests, loads[label], options.seconds)
                    rows.append({"load": label, "concurrency": concurrency, **measured})
            isolation = {"b_alone": _together(server, requests, {"b": 1}, options.seconds)["b"]}
            for honour in (False, True):
                clients = "honouring Retry-After" if honour else "retrying at once"
                _progress(f"two models: a at {options.overload} ({clients}) beside b at 1")
                loads = {"a": options.overload, "b": 1}
                both = _together(server, requests, loads, options.seconds, honour_a=honour)
                isolation[clients] = {"a_overloaded": both["a"], "b": both["b"]}
            return {"rows": rows, "isolation": isolation, "server_exit_code": server.stop()}


def _together(
    server: ServerProcess,
    requests: dict[str, bytes],
    loads: dict[str, int],
    seconds: float,
    honour_a: bool = False,
) -> dict[str, dict]:
    """Each model at its concurrency, all at once (one load generator thread per model);
    ``a``'s clients honour Retry-After when ``honour_a``."""

    def one(name: str) -> dict:
        host, port, request = server.host, server.port, requests[name]
        run_load(host, port, request, loads[name], 1.0)  # warm
        honour = honour_a and name == "a"
        result = run_load(host, port, request, loads[name], seconds, honour_retry_after=honour)
        return {**_row(result), "status_counts": result.status_counts()}

    with ThreadPoolExecutor(len(loads)) as pool:
        return dict(zip(loads, pool.map(one, loads), strict=True))


def _overload(
    server: ServerProcess, request: bytes, options: BenchOptions, honour_retry_after: bool
) -> dict:
    """Far more clients than the queue admits. Clients that retry at once keep the server
    answering 503s as fast as it can; clients that honour Retry-After, as real ones do, leave
    it the admitted work."""
    clients = "honouring Retry-After" if honour_retry_after else "retrying at once"
    _progress(f"overload: v2_binary at concurrency {options.overload}, clients {clients}")
    result = run_load(
        server.host,
        server.port,
        request,
        options.overload,
        options.seconds,
        honour_retry_after=honour_retry_after,
    )
    return {
        "concurrency": options.overload,
        "clients": clients,
        "status_counts": result.status_counts(),
        "admitted_200": result.summary(200),
        "rejected_503": result.summary(503),
        "failures": result.failures,
    }


def _plain_server(model: Path) -> ServerProcess:
    command = [sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:plain_app"]
    args = ["--port", "0", "--no-access-log", "--log-level", "info"]
    return ServerProcess(None, args, env={PLAIN_MODEL: str(model)}, command=command)


def _compare(
    scenario: str,
    request: bytes,
    concurrency: int,
    servers: dict[str, ServerProcess],
    seconds: float,
) -> dict:
    """Both servers at one point, one after the other in a random order, and their ratios."""
    order = random.sample(list(servers), len(servers))
    _progress(
        f"{scenario} at concurrency {concurrency}: {' then '.join(order)}, {seconds:g} s each"
    )
    measured = {
        name: _row(_measure(servers[name], request, concurrency, seconds)) for name in order
    }
    first, second = (measured[name] for name in servers)  # in the order given, not the order run
    return {
        "scenario": scenario,
        "concurrency": concurrency,
        **{name: measured[name] for name in servers},
        "req_per_s_ratio": first["req_per_s"] / second["req_per_s"],
        "p50_ratio": first["p50_ms"] / second["p50_ms"],
    }


def _measure(server: ServerProcess, request: bytes, concurrency: int, seconds: float) -> LoadResult:
    run_load(server.host, server.port, request, concurrency, 1.0)  # warm
    return run_load(server.host, server.port, request, concurrency, seconds)


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


def _photo(width: int, height: int):
    """scikit-learn's bundled china.jpg photo at this size."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg")).resize((width, height))


def _encoded(image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _classify_png() -> bytes:
    body = _encoded(_photo(224, 224), "PNG")
    return http_request("POST", "/v1/classify", body, {"Content-Type": "image/png"})


def _classify_phone_jpeg() -> bytes:
    """A 12-megapixel (4000x3000) JPEG, as a phone camera writes it."""
    body = _encoded(_photo(4000, 3000), "JPEG", quality=90)
    return http_request("POST", "/v1/classify", body, {"Content-Type": "image/jpeg"})


def _classify_multipart() -> bytes:
    """Eight 224x224 PNGs as eight multipart ``file`` fields of one request."""
    png = _encoded(_photo(224, 224), "PNG")
    boundary = "ln2d-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + png
        + b"\r\n"
        for i in range(8)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    content_type = f"multipart/form-data; boundary={boundary}"
    return http_request("POST", "/v1/classify", body, {"Content-Type": content_type})


CLASSIFY_SCENARIOS: dict[str, Callable[[], bytes]] = {
    "classify_png_224": _classify_png,
    "classify_jpeg_12mp": _classify_phone_jpeg,
    "classify_multipart_8": _classify_multipart,
}


def _v2_request(info: ModelInfo, name: str | None = None) -> bytes:
    """A v2 binary infer request for model ``name`` (default: the model's own)."""
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
        f"/v2/models/{name or info.name}/infer",
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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        "ln2d serve against the plain endpoint (ratio = ln2d / plain; req/s: higher is better, "
        "p50: lower is better)",
        "",
        "| scenario | concurrency | ln2d req/s | plain req/s | ratio | ln2d p50 ms | plain p50 ms "
        "| ratio | ln2d p99 ms | plain p99 ms | non-200 (ln2d / plain) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in [*report["rows"], report["a_a"]]:
        first, second = (row[name] for name in row if isinstance(row[name], dict))
        label = row["scenario"] if "ln2d" in row else f"A/A: {row['scenario']}, plain twice"
        lines.append(
            f"| {label} | {row['concurrency']} | {first['req_per_s']:,.0f} | "
            f"{second['req_per_s']:,.0f} | {row['req_per_s_ratio']:.2f} | {first['p50_ms']:.1f} | "
            f"{second['p50_ms']:.1f} | {row['p50_ratio']:.2f} | {first['p99_ms']:.1f} | "
            f"{second['p99_ms']:.1f} | {first['non_200']} / {second['non_200']} |"
        )
    lines += [
        "",
        "| scenario (ln2d serve alone) | concurrency | req/s | p50 ms | p99 ms | non-200 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["v2_rows"]:
        lines.append(
            f"| {row['scenario']} | {row['concurrency']} | {row['req_per_s']:,.0f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['non_200']} |"
        )
    lines.append("")
    for over in report["overload"]:
        ok, busy = over["admitted_200"], over["rejected_503"]
        lines.append(
            f"overload at {over['concurrency']} concurrent, clients {over['clients']}: "
            f"{ok['count']} admitted ({ok['per_s']:,.0f}/s, p50 {ok['p50_ms']:.1f} ms, "
            f"p99 {ok['p99_ms']:.1f} ms), {busy['count']} rejected with 503 "
            f"(p50 {busy['p50_ms']:.1f} ms, p99 {busy['p99_ms']:.1f} ms), "
            f"failures {over['failures']}"
        )
    soak = report["soak"]
    lines.append(
        f"soak: {soak['requests']} requests, RSS {soak['rss_before_mb']:.1f} -> "
        f"{soak['rss_after_mb']:.1f} MiB ({soak['growth_percent']:+.2f}%); "
        f"server exit code after SIGTERM: {report['server_exit_code']}"
    )
    return "\n".join(
        [*lines, "", *_grpc_table(report["grpc"]), *_two_models_table(report["two_models"])]
    )


def _grpc_table(grpc: dict | None) -> list[str]:
    if grpc is None:
        return ["gRPC: not measured (no grpcio in this install: the grpc extra)", ""]
    lines = [
        "gRPC ModelInfer against v2 binary HTTP, same server and tensor (ratio = gRPC / HTTP; "
        "CPU µs per request, of the server process and of this one, the load generator)",
        "",
        "| concurrency | gRPC req/s | HTTP req/s | ratio | gRPC p50 ms | HTTP p50 ms | gRPC p99 ms "
        "| HTTP p99 ms | server CPU µs gRPC / HTTP | client CPU µs gRPC / HTTP | non-200 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in grpc["rows"]:
        lines.append(_pair(row["concurrency"], row["grpc"], row["http_binary"], row))
    a_a = grpc["a_a"]
    label = f"A/A: gRPC twice, {a_a['concurrency']}"
    lines += [_pair(label, a_a["grpc"], a_a["grpc again"], a_a), ""]
    return lines


def _pair(label: object, first: dict, second: dict, row: dict) -> str:
    """One line of the gRPC table: two measurements side by side."""
    return (
        f"| {label} | {first['req_per_s']:,.0f} | {second['req_per_s']:,.0f} | "
        f"{row['req_per_s_ratio']:.2f} | {first['p50_ms']:.1f} | {second['p50_ms']:.1f} | "
        f"{first['p99_ms']:.1f} | {second['p99_ms']:.1f} | {first['server_cpu_us']:.0f} / "
        f"{second['server_cpu_us']:.0f} | {first['client_cpu_us']:.0f} / "
        f"{second['client_cpu_us']:.0f} | {first['non_200'] + second['non_200']} |"
    )


def _two_models_table(two: dict) -> list[str]:
    lines = [
        "Two models in one server (v2 binary; each model's own queue and thread share)",
        "",
        "| load | concurrency per model | a req/s | b req/s | a p99 ms | b p99 ms | non-200 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in two["rows"]:
        a, b = row.get("a"), row["b"]
        lines.append(
            f"| {row['load']} | {row['concurrency']} | "
            f"{a['req_per_s'] if a else 0:,.0f} | {b['req_per_s']:,.0f} | "
            f"{a['p99_ms'] if a else float('nan'):.1f} | {b['p99_ms']:.1f} | "
            f"{(a['non_200'] if a else 0) + b['non_200']} |"
        )
    iso = two["isolation"]
    alone = iso["b_alone"]
    lines += [
        "",
        f"b at concurrency 1 alone: {alone['req_per_s']:,.0f} req/s, p99 {alone['p99_ms']:.1f} ms, "
        f"non-200 {alone['non_200']}",
    ]
    for clients in ("retrying at once", "honouring Retry-After"):
        b, a = iso[clients]["b"], iso[clients]["a_overloaded"]
        lines.append(
            f"b at 1 beside a overloaded by clients {clients}: {b['req_per_s']:,.0f} req/s, "
            f"p99 {b['p99_ms']:.1f} ms, non-200 {b['non_200']}; a answered {a['status_counts']}"
        )
    return lines


def _progress(message: str) -> None:
    print(f"[bench-serve] {message}", file=sys.stderr, flush=True)
