"""A second, independent timing of the serving headline: ln2d serve against the plain endpoint.

Nothing of ``ln2d bench-serve``'s load generator is used: ApacheBench (``ab``, a C client from
Debian's apache2-utils) sends the same 224x224 PNG at concurrency 1 and 32 to each server in
turn, three rounds in alternating order, and the medians of its own "Requests per second" and
mean "Time per request" lines are compared. ab speaks HTTP/1.0, which uvicorn does not keep
alive, so every request opens a connection: on both servers alike. ab counts answers whose
length differs from the first as failed; the JSON carries timings, so only non-2xx counts.

    sudo apt-get install apache2-utils   # once
    python scripts/crosscheck_serve.py MODEL.onnx   # about two minutes on 2 cores
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ln2d.serve.tools.bench_serve import _encoded, _photo, _plain_server
from ln2d.serve.tools.launcher import ServerProcess

REQUESTS = {1: 2000, 32: 6000}


def ab(url: str, body: Path, concurrency: int) -> tuple[float, float]:
    """Requests per second and the mean latency (ms) that ab reports."""
    command = ["ab", "-q", "-c", str(concurrency), "-n", str(REQUESTS[concurrency])]
    command += ["-p", str(body), "-T", "image/png", f"{url}/v1/classify"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)", out)
    if re.search(r"Non-2xx responses:\s+[1-9]", out) or (errors and errors.groups() != ("0",) * 3):
        raise SystemExit(f"ab saw non-2xx answers or errors:\n{out}")
    rate = float(re.search(r"Requests per second:\s+([\d.]+)", out)[1])
    mean = float(re.search(r"Time per request:\s+([\d.]+) \[ms\] \(mean\)", out)[1])
    return rate, mean


def main(model: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        body = Path(scratch) / "photo.png"
        body.write_bytes(_encoded(_photo(224, 224), "PNG"))
        with ServerProcess(model, ["--no-access-log"]) as ln2d, _plain_server(model) as plain:
            servers = {"ln2d": ln2d, "plain": plain}
            for concurrency in REQUESTS:
                rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
                for round_ in range(3):
                    order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                    for name in order:
                        rounds[name].append(ab(servers[name].url, body, concurrency))
                rate = {n: statistics.median(r for r, _ in v) for n, v in rounds.items()}
                mean = {n: statistics.median(m for _, m in v) for n, v in rounds.items()}
                print(
                    f"concurrency {concurrency}: ln2d {rate['ln2d']:,.0f} req/s, plain "
                    f"{rate['plain']:,.0f} req/s (ratio {rate['ln2d'] / rate['plain']:.2f}); "
                    f"mean ms ln2d {mean['ln2d']:.2f}, plain {mean['plain']:.2f} "
                    f"(ratio {mean['ln2d'] / mean['plain']:.2f})"
                )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
