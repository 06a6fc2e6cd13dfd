"""What Ray Serve's ingress costs ln2d on one machine: v2 binary infer of MODEL.onnx at each
concurrency, through ``ln2d serve-ray``'s application behind each ingress Ray offers, with 1
and 2 replicas, side by side with a plain ``ln2d serve`` (twice: the A/A control), in a random
order per round. Every server gets the same inference threads (--threads, default 1).

Ingresses: Ray's Python proxy (``proxy``); HAProxy as Ray ships it (``haproxy-as-it-comes``:
RAY_SERVE_ENABLE_HA_PROXY=1 alone); and what ``ln2d serve-ray`` starts by default
(``haproxy``: also RAY_SERVE_THROUGHPUT_OPTIMIZED=1, ``ray_supervisor.environment``). Each is
its own local Ray instance, started the way ``ln2d serve-ray`` starts it (its driver in a
session of its own), and stopped before the next.

Where the time goes: at the highest concurrency, the CPU seconds every process spent per
request (HAProxy, the replica, Ray's other processes, the plain server), from /proc, for the
ingress and the plain server measured alone. With --profile, py-spy then samples the replica
behind the default ingress and the plain server under that load, and their CPU per request is
split by the package of the innermost Python frame: what Ray's replica adds to ln2d's path.
Prints markdown tables and writes JSON.

    python scripts/bench_ray.py MODEL.onnx [--seconds 5] [--concurrency 1,8,32] [--profile]
                                [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ln2d.serve import ray_supervisor
from ln2d.serve.model import Model
from ln2d.serve.ray_serve import Scaling, payload
from ln2d.serve.settings import Settings
from ln2d.serve.tools.bench_serve import _v2_request
from ln2d.serve.tools.launcher import ServerProcess, free_port
from ln2d.serve.tools.loadgen import run_load

INGRESSES = {
    "proxy": ray_supervisor.environment("proxy"),
    "haproxy-as-it-comes": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
    },
    "haproxy": ray_supervisor.environment("haproxy"),
}
TICKS = os.sysconf("SC_CLK_TCK")


def measure(target: tuple[str, int], request: bytes, concurrency: int, seconds: float) -> dict:
    host, port = target
    run_load(host, port, request, concurrency, min(1.0, seconds / 2))  # warm connections
    result = run_load(host, port, request, concurrency, seconds)
    answered = result.summary(200)
    return {**answered, "non_200": len(result.statuses) - answered["count"]}


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's name (Ray's actors by their title) and CPU seconds so far."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            title = (
                Path(stat.parent / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            )
        except (OSError, IndexError):
            continue
        found[int(stat.parent.name)] = (title, (int(fields[11]) + int(fields[12])) / TICKS)
    return found


def role(title: str, plain_pids: set[int], pid: int) -> str:
    if pid in plain_pids:
        return "plain ln2d serve"
    if "haproxy" in title:
        return "HAProxy"
    if "ServeReplica" in title:
        return "the replica"
    if "ray" in title or "gcs_server" in title or "raylet" in title or "Serve" in title:
        return "Ray's other processes"
    return ""


def cost(target, request, concurrency, seconds, plain_pids) -> dict:
    """CPU ms per answered request, by role, over one load run of ``target`` alone."""
    before = cpu_seconds()
    result = measure(target, request, concurrency, seconds)
    after = cpu_seconds()
    spent: dict[str, float] = {}
    for pid, (title, seconds_after) in after.items():
        name = role(title, plain_pids, pid)
        if name:
            spent[name] = spent.get(name, 0.0) + seconds_after - before.get(pid, (title, 0.0))[1]
    return {name: 1000 * s / result["count"] for name, s in spent.items()} | {
        "req_s": result["per_s"]
    }


PACKAGES = {  # a frame's file, as py-spy names it, by its first folder
    "ray": "Ray",
    "starlette": "Starlette / FastAPI",
    "fastapi": "Starlette / FastAPI",
    "uvicorn": "uvicorn",
    "onnxruntime": "ONNX Runtime",
    "serve": "ln2d",
    "ln2d": "ln2d",
    "asyncio": "asyncio",
}
PROFILE_RATE = 250  # samples a second


def package(frame: str) -> str:
    """``frame`` is ``function (folder/file.py:line)``."""
    folder = frame.rpartition("(")[2].split("/")[0]
    return PACKAGES.get(folder, "other (standard library, pydantic, numpy, ...)")


def profile(pid: int, target, request: bytes, concurrency: int, seconds: float) -> dict:
    """CPU ms per request by package, from py-spy's samples of the running threads of ``pid``
    (without --idle: a sample is a thread on CPU, or runnable) under load on ``target``."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        recorder = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate",
             str(PROFILE_RATE), "--nonblocking", "--format", "raw", "--output", raw.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        per_s = measure(target, request, concurrency, seconds)["per_s"]  # outlasts the record
        recorder.wait(60)
        samples: dict[str, int] = {}
        for line in Path(raw.name).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            python = [frame for frame in stack.split(";") if ".py:" in frame]
            name = package(python[-1]) if python else "no Python frame"
            samples[name] = samples.get(name, 0) + int(count)
    per_request = 1000 / PROFILE_RATE / (per_s * int(seconds))  # ms of CPU a sample / requests
    return {name: n * per_request for name, n in sorted(samples.items())}


def start_ingress(model: Path, name: str, replicas: int, threads: int) -> tuple:
    port = free_port()
    settings = Settings(model_path=model, port=port, threads=threads, access_log=False)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | INGRESSES[name]
    driver = ray_supervisor.start_driver(
        payload(settings, Scaling(replicas=replicas), None, name),
        env,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in driver.stderr:
        if "serving at" in line:
            break
    else:
        raise SystemExit(f"ln2d serve-ray ({name}) did not start")
    return driver, ("127.0.0.1", port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1, help="inference threads per server")
    parser.add_argument("--ingresses", default=",".join(INGRESSES))
    parser.add_argument("--profile", action="store_true", help="py-spy: the replica's path")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    request = _v2_request(Model(args.model, "cpu", False, 1).info)
    flags = ["--no-access-log", "--threads", str(args.threads)]
    rows, costs, profiles = [], {}, {}
    with ServerProcess(args.model, flags) as plain, ServerProcess(args.model, flags) as control:
        plain_pids = {plain.process.pid}
        for name in args.ingresses.split(","):
            for replicas in (1, 2):
                driver, ray_target = start_ingress(args.model, name, replicas, args.threads)
                targets = {
                    "plain": (plain.host, plain.port),
                    "plain (A/A)": (control.host, control.port),
                    "ray": ray_target,
                }
                for concurrency in concurrencies:
                    print(f"[bench-ray] {name}, {replicas} replica(s), c={concurrency}",
                          file=sys.stderr)  # fmt: skip
                    row = {"ingress": name, "replicas": replicas, "concurrency": concurrency}
                    for target in random.sample(list(targets), len(targets)):
                        row[target] = measure(targets[target], request, concurrency, args.seconds)
                    rows.append(row)
                if replicas == 1:
                    top = max(concurrencies)
                    costs[name] = cost(ray_target, request, top, args.seconds, plain_pids)
                    costs[name + " / plain"] = cost(targets["plain"], request, top, args.seconds,
                                                    plain_pids)  # fmt: skip
                    if args.profile and name == "haproxy":
                        (replica,) = [pid for pid, (title, _) in cpu_seconds().items()
                                      if "ServeReplica" in title]  # fmt: skip
                        profiles["the replica"] = profile(replica, ray_target, request, top,
                                                          args.seconds)  # fmt: skip
                        profiles["plain ln2d serve"] = profile(plain.process.pid,
                                                               targets["plain"], request, top,
                                                               args.seconds)  # fmt: skip
                ray_supervisor.stop_driver(driver, 20)
                time.sleep(1)
    print(table(rows))
    print()
    print(cost_table(costs, max(concurrencies)))
    if profiles:
        print()
        print(profile_table(profiles, max(concurrencies)))
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "rows": rows, "cpu_ms": costs,
                                         "profile_ms": profiles}, indent=2))  # fmt: skip
    return 0


def table(rows: list[dict]) -> str:
    lines = [
        "| ingress | replicas | concurrency | ray req/s | plain req/s | ray / plain | A/A "
        "| ray p50 ms | plain p50 ms | ray p99 ms | plain p99 ms | non-200 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ray_, plain, control = row["ray"], row["plain"], row["plain (A/A)"]
        failed = ray_["non_200"] + plain["non_200"] + control["non_200"]
        lines.append(
            f"| {row['ingress']} | {row['replicas']} | {row['concurrency']} "
            f"| {ray_['per_s']:,.0f} | {plain['per_s']:,.0f} "
            f"| {ray_['per_s'] / plain['per_s']:.2f} "
            f"| {plain['per_s'] / control['per_s']:.2f} | {ray_['p50_ms']:.1f} "
            f"| {plain['p50_ms']:.1f} | {ray_['p99_ms']:.1f} | {plain['p99_ms']:.1f} | {failed} |"
        )
    return "\n".join(lines)


def cost_table(costs: dict, concurrency: int) -> str:
    roles = ["HAProxy", "the replica", "Ray's other processes", "plain ln2d serve"]
    lines = [
        f"CPU ms per request at c={concurrency}, each server measured alone, one replica:",
        "| measured | req/s | " + " | ".join(roles) + " | total |",
        "|---|---:|" + "---:|" * (len(roles) + 1),
    ]
    for name, spent in costs.items():
        values = [spent.get(r, 0.0) for r in roles]
        lines.append(f"| {name} | {spent['req_s']:,.0f} | " + " | ".join(f"{v:.2f}" for v in values)
                     + f" | {sum(values):.2f} |")  # fmt: skip
    return "\n".join(lines)


def profile_table(profiles: dict, concurrency: int) -> str:
    names = sorted({name for spent in profiles.values() for name in spent})
    columns = list(profiles)
    lines = [
        f"CPU ms per request at c={concurrency} by the package of the innermost Python frame "
        f"(py-spy, {PROFILE_RATE} samples/s), the replica behind haproxy and the plain server:",
        "| package | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in [*names, "total"]:
        values = [sum(p.values()) if name == "total" else p.get(name, 0.0)
                  for p in profiles.values()]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
