"""What Ray Serve's proxy costs ln2d on one machine: v2 binary infer of MODEL.onnx at each
concurrency, through ``ln2d serve-ray``'s application with 1 and then 2 replicas, side by side
with a plain ``ln2d serve`` (twice: the A/A control), in a random order per round. Every
server gets the same inference threads (--threads, default 1). Prints a markdown table and
writes JSON.

    python scripts/bench_ray.py MODEL.onnx [--seconds 5] [--concurrency 1,8,32] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

import ray
from ray import serve

from ln2d.serve.model import Model
from ln2d.serve.ray_serve import Scaling, start
from ln2d.serve.settings import Settings
from ln2d.serve.tools.bench_serve import _v2_request
from ln2d.serve.tools.launcher import ServerProcess, free_port
from ln2d.serve.tools.loadgen import run_load


def measure(target: tuple[str, int], request: bytes, concurrency: int, seconds: float) -> dict:
    host, port = target
    run_load(host, port, request, concurrency, min(1.0, seconds / 2))  # warm connections
    result = run_load(host, port, request, concurrency, seconds)
    answered = result.summary(200)
    return {**answered, "non_200": len(result.statuses) - answered["count"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--threads", type=int, default=1, help="inference threads per server")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    info = Model(args.model, "cpu", False, 1).info
    request = _v2_request(info)
    flags = ["--no-access-log", "--threads", str(args.threads)]
    ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    rows = []
    with ServerProcess(args.model, flags) as plain, ServerProcess(args.model, flags) as control:
        for replicas in (1, 2):
            settings = Settings(
                model_path=args.model, port=port, threads=args.threads, access_log=False
            )
            start(settings, Scaling(replicas=replicas))
            targets = {
                "plain": (plain.host, plain.port),
                "plain (A/A)": (control.host, control.port),
                f"ray x{replicas}": ("127.0.0.1", port),
            }
            for concurrency in concurrencies:
                print(f"[bench-ray] {replicas} replica(s), c={concurrency}", file=sys.stderr)
                row = {"replicas": replicas, "concurrency": concurrency}
                for name in random.sample(list(targets), len(targets)):
                    row[name.replace(f"ray x{replicas}", "ray")] = measure(
                        targets[name], request, concurrency, args.seconds
                    )
                rows.append(row)
    serve.shutdown()
    ray.shutdown()
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "rows": rows}, indent=2))
    return 0


def table(rows: list[dict]) -> str:
    lines = [
        "| replicas | concurrency | ray req/s | plain req/s | ray / plain | A/A | ray p50 ms "
        "| plain p50 ms | ray p99 ms | plain p99 ms | non-200 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ray_, plain, control = row["ray"], row["plain"], row["plain (A/A)"]
        failed = ray_["non_200"] + plain["non_200"] + control["non_200"]
        lines.append(
            f"| {row['replicas']} | {row['concurrency']} | {ray_['per_s']:,.0f} "
            f"| {plain['per_s']:,.0f} | {ray_['per_s'] / plain['per_s']:.2f} "
            f"| {plain['per_s'] / control['per_s']:.2f} | {ray_['p50_ms']:.1f} "
            f"| {plain['p50_ms']:.1f} | {ray_['p99_ms']:.1f} | {plain['p99_ms']:.1f} | {failed} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
