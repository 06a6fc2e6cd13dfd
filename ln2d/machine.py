"""What this machine computes with: the CPU features that pick ONNX Runtime's and ln2d's kernels
at run time, and the runtime's version. A check made here records them, so that a check made
elsewhere can say what differs.

The features come from numpy's CPU dispatcher, which asks the CPU itself (CPUID), so they are
right under an emulator too (``qemu-x86_64 -cpu Haswell``), where /proc/cpuinfo describes the
host. Torch-free and onnx-free: the server uses it.
"""

from __future__ import annotations

import functools
import platform

# The features whose presence changes which kernels run: the x86-64 levels (AVX2 + FMA,
# AVX-512), the dot-product instructions int8 kernels use (VNNI), and their ARM counterparts.
KERNEL_FEATURES = (
    "X86_V2",
    "X86_V3",
    "X86_V4",
    "AVX512VNNI",
    "AVX512BF16",
    "AVX512FP16",
    "ASIMD",
    "ASIMDDP",
    "SVE",
)


@functools.cache
def cpu_features() -> tuple[str, ...]:
    """The KERNEL_FEATURES this CPU has, in that order."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as detected
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as detected
    return tuple(name for name in KERNEL_FEATURES if detected.get(name))


def describe(provider: str = "cpu") -> dict:
    """This machine as a check records it: architecture, CPU features, provider, runtime."""
    import onnxruntime as ort

    return {
        "machine": platform.machine(),
        "cpu_features": list(cpu_features()),
        "provider": provider,
        "onnxruntime": ort.__version__,
    }


def difference(recorded: dict, here: dict) -> str:
    """What differs between a recorded machine and this one, in a few words ('' if nothing)."""
    parts = []
    gone = [f for f in recorded.get("cpu_features", ()) if f not in here["cpu_features"]]
    new = [f for f in here["cpu_features"] if f not in recorded.get("cpu_features", ())]
    if gone or new:
        parts.append("CPU " + " ".join([*(f"-{f}" for f in gone), *(f"+{f}" for f in new)]))
    for key in ("machine", "provider", "onnxruntime"):
        if recorded.get(key) not in (None, here[key]):
            parts.append(f"{key} {recorded[key]} -> {here[key]}")
    return ", ".join(parts)
