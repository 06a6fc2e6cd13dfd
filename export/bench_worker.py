"""The ONNX Runtime half of ``ln2d bench``, run as ``python -m ln2d.export.bench_worker SPEC OUT``.

A process of its own that never imports torch, so that no OpenMP worker of torch's is
spinning while a session is timed. SPEC (JSON) lists jobs: a provider, the ONNX files of the
variants by name (the A/A control names the same file twice), the input shapes to time and
the variants to profile, if any. OUT gets each job's medians (and profiles) per shape.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ln2d.export import timing
from ln2d.runtime import SessionSettings, open_session


def main(argv: list[str]) -> int:
    spec_path, out_path = map(Path, argv)
    spec = json.loads(spec_path.read_text())
    total = sum(len(job["shapes"]) for job in spec["jobs"])
    bar = tqdm(total=total, desc="onnxruntime", disable=not spec["progress"])
    results = []
    for job in spec["jobs"]:
        for index, shape in enumerate(job["shapes"]):
            # Fresh sessions per shape: a session's memory arena remembers the shapes it ran
            # before, and that history, not the graph, then decides some of the timings.
            sessions = {
                name: open_session(path, SessionSettings(job["provider"], spec["threads"]))
                for name, path in job["models"].items()
            }
            bar.set_postfix_str(f"{job['network']} {job['provider']} {shape}")
            x = np.random.default_rng(index).standard_normal(shape, dtype=np.float32)
            feeds = {next(iter(sessions.values())).get_inputs()[0].name: x}
            runners = {
                name: timing.runner(s, feeds, job["provider"]) for name, s in sessions.items()
            }
            medians = timing.interleaved(runners, spec["seconds"], seed=index)
            point = {"job": job["id"], "shape": shape, "median_ms": medians}
            if job["provider"] == "cpu" and job["profile"]:
                point["profile_us"] = {
                    name: timing.op_profile(job["models"][name], feeds, spec["threads"])
                    for name in job["profile"]
                }
            results.append(point)
            bar.update()
    bar.close()
    out_path.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
