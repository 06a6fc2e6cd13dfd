"""Finding CUDA for ONNX Runtime in a process without torch.

onnxruntime-gpu's CUDA provider needs the CUDA runtime, cuBLAS, cuFFT, cuRAND and cuDNN. A
process that imported torch first has them loaded by torch's wheels; a torch-free server does
not, and the provider then fails to load and ONNX Runtime silently runs on the CPU. The
``cuda`` and ``cudnn`` extras of onnxruntime-gpu install NVIDIA's pip libraries, and
``onnxruntime.preload_dlls()`` loads them from there: ``prepare`` does it once per process,
before the first CUDA session. When the provider still does not load, ``missing`` names the
libraries this process cannot load. Torch-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

# What the CUDA 12 builds of onnxruntime-gpu's CUDA provider link against.
LIBRARIES = (
    "libcudart.so.12",
    "libcublas.so.12",
    "libcublasLt.so.12",
    "libcurand.so.10",
    "libcufft.so.11",
    "libcudnn.so.9",
)
INSTALL = "pip install 'ln2d[serve,gpu]' (onnxruntime-gpu with NVIDIA's cuda and cudnn libraries)"


@functools.cache
def prepare() -> None:
    """Load NVIDIA's pip libraries into this process, once (a no-op where onnxruntime has no
    ``preload_dlls``, before 1.21, or finds nothing to load)."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        # Best effort: what it could not load, missing() names afterwards.
        with contextlib.suppress(Exception):
            preload()


def missing(libraries: tuple[str, ...] = LIBRARIES) -> list[str]:
    """The libraries of ``libraries`` that this process cannot load."""
    absent = []
    for name in libraries:
        try:
            ctypes.CDLL(name)
        except OSError:
            absent.append(name)
    return absent


def not_loaded_message() -> str:
    """Why the CUDA provider did not load, in one line."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime build has no CUDA provider; {INSTALL}"
    absent = missing()
    if absent:
        return f"the CUDA libraries {', '.join(absent)} cannot be loaded; {INSTALL}"
    return "the CUDA libraries load, so the GPU or its driver is not usable (run nvidia-smi)"
