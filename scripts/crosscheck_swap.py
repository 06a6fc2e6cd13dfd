"""A second, independent check of the version-swap headline: no request fails while a new
version is loaded and the old one retired under load.

Nothing of ln2d's load generator or of tritonclient is used: ApacheBench (``ab``, a C client;
HTTP/1.0, a new connection per request) sends unversioned v2 JSON requests at concurrency 32
for ``--seconds`` to a repository of MODEL.onnx as version 1; after a third of the time the
model is copied in as version 2 and loaded with a plain HTTP call (``latest 1`` retires version
1), and version 1's folder is deleted. ab's own counts are printed: complete requests, non-2xx
answers, connect/receive/exception errors.

    sudo apt-get install apache2-utils   # once
    python scripts/crosscheck_swap.py MODEL.onnx
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from ln2d.serve.model import Model
from ln2d.serve.tools.launcher import ServerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    info = Model(args.model, "cpu", False, 1).info
    x = np.random.default_rng(0).standard_normal((1, *info.sample_shape)).astype(np.float32)
    tensor = {"name": info.input_name, "datatype": "FP32", "shape": list(x.shape)}
    with tempfile.TemporaryDirectory() as folder:
        repo, body = Path(folder) / "repo", Path(folder) / "body.json"
        body.write_text(json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}))
        (repo / "m" / "1").mkdir(parents=True)
        shutil.copyfile(args.model, repo / "m" / "1" / "model.onnx")
        flags = ["--no-access-log", "--model-control-mode", "explicit", "--load-models", "m"]
        with ServerProcess(repo, flags) as server:
            command = ["ab", "-q", "-c", "32", "-t", str(args.seconds), "-n", "10000000"]
            command += [
                "-p",
                str(body),
                "-T",
                "application/json",
                f"{server.url}/v2/models/m/infer",
            ]
            load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            time.sleep(args.seconds / 3)  # the protocol: steady load before the swap
            (repo / "m" / "2").mkdir()
            shutil.copyfile(args.model, repo / "m" / "2" / "model.onnx")
            started = time.perf_counter()
            urllib.request.urlopen(
                urllib.request.Request(f"{server.url}/v2/repository/models/m/load", b"{}")
            ).read()
            swap_ms = (time.perf_counter() - started) * 1000
            shutil.rmtree(repo / "m" / "1")
            out, _ = load.communicate()
            index = urllib.request.urlopen(
                urllib.request.Request(f"{server.url}/v2/repository/index", b"")
            ).read()
    complete = re.search(r"Complete requests:\s+(\d+)", out)[1]
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    errors = re.search(r"Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)", out)
    print(f"complete requests {complete}; non-2xx {non_2xx[1] if non_2xx else 0}; connect, "
          f"receive, exception errors {errors.groups() if errors else ('0', '0', '0')}; "
          f"load answered in {swap_ms:.0f} ms; index after: {index.decode()}")  # fmt: skip


if __name__ == "__main__":
    main()
