"""Finding CUDA for ONNX Runtime in a process without torch.

onnxruntime-gpu's CUDA provider (``libonnxruntime_providers_cuda.so``) links against the CUDA
runtime, cuBLAS, cuFFT, cuRAND and cuDNN of the CUDA version it was built for. A process that
imported torch first has torch's copies loaded; a torch-free server does not, so the provider
fails to load and ONNX Runtime runs on the CPU. The ``cuda`` and ``cudnn`` extras of
onnxruntime-gpu install NVIDIA's pip libraries, and ``onnxruntime.preload_dlls()`` loads them
from there: ``prepare`` does it once per process, before the first CUDA session. When the
provider still does not load, ``not_loaded_message`` asks the dynamic loader itself, which
names the exact library (and version) that is missing. Torch-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from pathlib import Path

INSTALL = "pip install 'ln2d[serve,gpu]' (onnxruntime-gpu with NVIDIA's cuda and cudnn libraries)"
PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"


@functools.cache
def prepare() -> None:
    """Load NVIDIA's pip libraries into this process, once (a no-op where onnxruntime has no
    ``preload_dlls``, before 1.21, or finds nothing to load)."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        # Best effort: what it could not load, the loader names afterwards. Its advice is
        # printed, and stdout belongs to the command (JSON reports, the server's log).
        with contextlib.suppress(Exception), contextlib.redirect_stdout(sys.stderr):
            preload()


def load_error(library: Path) -> str | None:
    """Why the dynamic loader cannot load ``library`` into this process, or None if it can:
    its message names the first dependency it did not find."""
    try:
        ctypes.CDLL(str(library))
    except OSError as error:
        return str(error)
    return None


def not_loaded_message() -> str:
    """Why the CUDA provider did not load, in one line."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime build has no CUDA provider; {INSTALL}"
    provider = Path(ort.__file__).parent / "capi" / PROVIDER_LIBRARY
    error = load_error(provider)
    if error is not None:
        return f"its library does not load ({error}); {INSTALL}"
    return "its library loads, so the GPU or its driver is not usable here (run nvidia-smi)"
