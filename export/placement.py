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

from ln2d.constants import PROVIDERS
from ln2d.runtime import SessionSettings, open_session


def run_and_place(model: bytes, feeds: dict[str, np.ndarray], provider: str = "cuda"):
    """Run ``model`` once on ``provider`` (CPU as ONNX Runtime's fallback); return its outputs
    and the op types of the nodes that ran on the CPU instead."""
    with tempfile.TemporaryDirectory() as folder:
        profile = os.path.join(folder, "ort")
        settings = SessionSettings(provider, cpu_fallback=True, profile_to=profile)
        session = open_session(model, settings)
        outputs = session.run(None, feeds)
        with open(session.end_profiling()) as trace:
            events = json.load(trace)
    on_cpu = {
        event["args"]["op_name"]
        for event in events
        if event.get("cat") == "Node" and event["args"].get("provider") == PROVIDERS["cpu"]
    }
    return outputs, sorted(on_cpu)
