"""Which execution provider ONNX Runtime ran each node on, read from its own profile.

ONNX Runtime silently runs a node on the CPU when the GPU provider has no kernel for it (an op
version it does not register, a dtype it lacks), then copies tensors to and from the GPU around
it on every call. Its profile names the provider of every kernel it ran.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from ln2d import native
from ln2d.constants import PROVIDERS, ort_provider


def run_and_place(model: bytes, feeds: dict[str, np.ndarray], provider: str = "cuda"):
    """Run ``model`` once on ``provider`` (CPU as ONNX Runtime's fallback); return its outputs
    and the op types of the nodes that ran on the CPU instead."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = native.session_options()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "ort")
        options.log_severity_level = 3  # its fallback warnings: the profile names the nodes
        providers = [ort_provider(provider)]
        if provider != "cpu":
            providers.append(PROVIDERS["cpu"])
        session = ort.InferenceSession(model, options, providers=providers)
        outputs = session.run(None, feeds)
        with open(session.end_profiling()) as trace:
            events = json.load(trace)
    on_cpu = {
        event["args"]["op_name"]
        for event in events
        if event.get("cat") == "Node" and event["args"].get("provider") == PROVIDERS["cpu"]
    }
    return outputs, sorted(on_cpu)
