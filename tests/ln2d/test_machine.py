"""What a check records of the machine it ran on (``ln2d.machine``)."""

from __future__ import annotations

import subprocess
import sys

from ln2d import machine
from tests.tiny_models import ELSEWHERE


def test_the_features_are_the_cpus_own_in_a_fresh_process():
    """CPUID through numpy's dispatcher, not a file: a process asks its CPU."""
    code = "from ln2d import machine; print(' '.join(machine.cpu_features()))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.split() == list(machine.cpu_features())
    assert set(machine.cpu_features()) <= set(machine.KERNEL_FEATURES)
    levels = [f for f in ("X86_V2", "X86_V3", "X86_V4") if f in machine.cpu_features()]
    assert levels == ["X86_V2", "X86_V3", "X86_V4"][: len(levels)]  # each implies the last


def test_what_differs_between_two_machines_is_named():
    here = {**ELSEWHERE, "cpu_features": ["X86_V2", "X86_V3"], "onnxruntime": "1.33.0"}
    assert machine.difference(ELSEWHERE, here) == (
        "CPU -X86_V4 -AVX512VNNI, onnxruntime 1.32.0 -> 1.33.0"
    )
    assert machine.difference(ELSEWHERE, ELSEWHERE) == ""
