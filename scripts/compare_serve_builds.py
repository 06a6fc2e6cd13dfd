"""Two builds of ``ln2d serve`` side by side on one model: a regression check for a change to
the server (for example, ``main`` against the commit before it), or one build under two sets
of flags (``--b-args "--otlp-endpoint ..."``: what tracing costs).

Each build is a Python interpreter that imports its own ``ln2d``. Both servers run at once; at
every point they are timed one after the other in a random order (1 s of warm-up, then
``--seconds``), for ``--rounds`` rounds, and the table has each one's median req/s and p99
across rounds, their ratio, and an A/A row (build A twice) for the noise.

    git worktree add /tmp/old <commit>
    pip install --no-deps --no-build-isolation --target /tmp/oldsite /tmp/old
    python -m venv --without-pip /tmp/oldvenv      # + a .pth: /tmp/oldsite, then .venv's site
    cd /tmp && /path/to/ln2d/.venv/bin/python /path/to/ln2d/scripts/compare_serve_builds.py \\
        /path/to/model.onnx --a /tmp/oldvenv/bin/python --b /path/to/ln2d/.venv/bin/python

Run it from outside the checkout: ``python -m ln2d`` puts the working folder first on the
path, and the checkout's own ``ln2d/`` folder would shadow build A's.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
from pathlib import Path

from ln2d.serve.model import Model
from ln2d.serve.tools.bench_serve import _classify_png, _v2_request
from ln2d.serve.tools.launcher import ServerProcess
from ln2d.serve.tools.loadgen import run_load

POINTS = [("v2_binary", 1), ("v2_binary", 8), ("v2_binary", 32), ("classify_png_224", 1),
          ("classify_png_224", 32)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--a", required=True, help="build A's python (the baseline)")
    parser.add_argument("--b", required=True, help="build B's python (the change)")
    parser.add_argument("--a-args", default="", help="extra ln2d serve flags for build A")
    parser.add_argument("--b-args", default="", help="extra ln2d serve flags for build B")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    info = Model(args.model, "cpu", False, 1).info
    bodies = {"v2_binary": _v2_request(info), "classify_png_224": _classify_png()}
    flags = {"A": shlex.split(args.a_args), "B": shlex.split(args.b_args)}
    servers = {
        name: ServerProcess(
            args.model,
            ["--no-access-log", *flags[name]],
            command=[python, "-m", "ln2d", "serve"],
        )
        for name, python in (("A", args.a), ("B", args.b))
    }
    pairs = {"B vs A": ("B", "A"), "A/A": ("A", "A")}
    rows = []
    try:
        for scenario, concurrency in POINTS:
            for label, (first, second) in pairs.items():
                if label == "A/A" and (scenario, concurrency) != ("v2_binary", 8):
                    continue
                rates: dict[str, list[float]] = {"first": [], "second": []}
                p99s: dict[str, list[float]] = {"first": [], "second": []}
                for _ in range(args.rounds):
                    order = random.sample([("first", first), ("second", second)], 2)
                    for slot, name in order:
                        server = servers[name]
                        body = bodies[scenario]
                        run_load(server.host, server.port, body, concurrency, 1.0)
                        result = run_load(server.host, server.port, body, concurrency, args.seconds)
                        ok = result.summary(200)
                        assert ok["count"] == len(result.statuses), result.status_counts()
                        rates[slot].append(ok["per_s"])
                        p99s[slot].append(ok["p99_ms"])
                row = {
                    "pair": label,
                    "scenario": scenario,
                    "concurrency": concurrency,
                    **{f"{s}_req_per_s": statistics.median(rates[s]) for s in rates},
                    **{f"{s}_p99_ms": statistics.median(p99s[s]) for s in p99s},
                }
                row["ratio"] = row["first_req_per_s"] / row["second_req_per_s"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print("\n| pair | scenario | c | first req/s | second req/s | ratio | first p99 | second p99 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['pair']} | {r['scenario']} | {r['concurrency']} | {r['first_req_per_s']:,.0f} | "
            f"{r['second_req_per_s']:,.0f} | {r['ratio']:.2f} | {r['first_p99_ms']:.1f} | "
            f"{r['second_p99_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
