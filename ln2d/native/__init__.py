"""ln2d's native kernels: the LayerNorm2d op for ONNX Runtime's CPU provider here
(``ai.ln2d::LayerNorm2d``), and PyTorch's eager forward and backward in ``eager``.

Each C library (``layernorm2d.c``, ``layernorm2d_eager.c``) is compiled into the wheel when a C
compiler is there. The ONNX Runtime one is loaded into every session ln2d opens, through
``session_options``. Torch-free, like the server that uses it.

Both compile their kernels once per x86-64 level (``levels.h``) and run the widest this CPU
has; ``LN2D_NATIVE_LEVEL`` (or ``set_level``) picks a narrower one, so that every clone can be
checked on a machine that has them all.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import os
from pathlib import Path

DOMAIN = "ai.ln2d"
OP = "LayerNorm2d"
HERE = Path(__file__).parent
LIBRARY_VARIABLE = "LN2D_NATIVE_LIBRARY"
LEVEL_VARIABLE = "LN2D_NATIVE_LEVEL"  # read by the C libraries themselves
LEVELS = ("default", "x86-64-v3", "x86-64-v4")  # SSE2, AVX2 + FMA, AVX-512


class NativeUnavailable(RuntimeError):
    """The model needs the native op and this install has no library for it."""


def library() -> Path | None:
    """The compiled library: the file ``LN2D_NATIVE_LIBRARY`` names (another build of the same
    source, such as ``make test-sanitized``'s), else this install's, if it has one."""
    return find_library("_layernorm2d", LIBRARY_VARIABLE)


def find_library(stem: str, variable: str) -> Path | None:
    """The file the environment variable names, else this package's compiled ``stem``."""
    chosen = os.environ.get(variable)
    if chosen:
        return Path(chosen) if Path(chosen).is_file() else None
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = HERE / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def available() -> bool:
    return library() is not None


def missing() -> NativeUnavailable:
    """The error for a model that needs the op where this install has no library."""
    return NativeUnavailable(
        f"this model uses {DOMAIN}::{OP}, ln2d's native kernel, and this install has no "
        "library for it: reinstall ln2d where a C compiler is available (pip install "
        "--force-reinstall --no-binary ln2d ln2d), or export with --target cpu"
    )


def session_options(options=None):
    """ONNX Runtime ``SessionOptions`` (new ones if None) with the op registered when this
    install has it: models that use it load, and other models do not notice."""
    import onnxruntime as ort

    options = options if options is not None else ort.SessionOptions()
    path = library()
    if path is not None:
        options.register_custom_ops_library(str(path))
    return options


def explain(error: Exception) -> Exception:
    """A session's load error, as NativeUnavailable when the cause is the missing op."""
    return missing() if DOMAIN in str(error) and not available() else error


@functools.cache
def _loaded(path: Path) -> ctypes.CDLL:
    """The library at ``path`` in this process: the same copy ONNX Runtime loads (the dynamic
    loader hands out one per file), so a level set here holds for its sessions too."""
    lib = ctypes.CDLL(str(path))
    lib.ln2d_level.restype = ctypes.c_char_p
    lib.ln2d_set_level.argtypes = lib.ln2d_cpu_has_level.argtypes = [ctypes.c_char_p]
    return lib


def _libraries() -> list[ctypes.CDLL]:
    from ln2d.native import eager

    paths = (library(), find_library("_layernorm2d_eager", eager.LIBRARY_VARIABLE))
    return [_loaded(path) for path in paths if path is not None]


def level() -> str | None:
    """The x86-64 level the native kernels run at in this process (None without them)."""
    libraries = _libraries()
    return libraries[0].ln2d_level().decode() if libraries else None


def cpu_levels() -> tuple[str, ...]:
    """The levels this CPU can run (those the native kernels were built for; none without)."""
    libraries = _libraries()
    return tuple(n for n in LEVELS if libraries and libraries[0].ln2d_cpu_has_level(n.encode()))


def set_level(name: str) -> None:
    """Run both libraries' kernels at level ``name`` from now on ("" for the widest), as
    ``LN2D_NATIVE_LEVEL`` does at start. ValueError for a level this CPU lacks."""
    for lib in _libraries():
        if lib.ln2d_set_level(name.encode()) != 0:
            raise ValueError(f"{name!r}: this CPU runs {', '.join(cpu_levels())}")
