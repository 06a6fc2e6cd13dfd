"""Finding CUDA without torch (``ln2d.cuda``): which libraries a process cannot load, and the
one line a CUDA session that did not get its provider raises. The GPU side of it runs in
``make gpu-check`` on a GPU machine."""

from __future__ import annotations

import ctypes.util
import shutil
import subprocess
from pathlib import Path

import onnxruntime as ort
import pytest

from ln2d import cuda
from ln2d.runtime import ProviderNotActive, SessionSettings, open_session
from tests.tiny_models import classifier


@pytest.mark.integration  # runs a C compiler; not under the sanitizer build's preload
def test_the_loader_names_the_library_a_library_needs(tmp_path):
    """A real shared library that links against one that does not exist, as the CUDA
    provider links against cuDNN: the loader's message names the missing one."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build the test library")
    (tmp_path / "absent.c").write_text("int absent(void) { return 1; }\n")
    (tmp_path / "needy.c").write_text("int absent(void); int needy(void) { return absent(); }\n")
    cc = ["cc", "-shared", "-fPIC"]
    subprocess.run([*cc, "-o", tmp_path / "libln2dabsent.so.7", tmp_path / "absent.c",
                    "-Wl,-soname,libln2dabsent.so.7"], check=True)  # fmt: skip
    subprocess.run([*cc, "-o", tmp_path / "libneedy.so", tmp_path / "needy.c",
                    tmp_path / "libln2dabsent.so.7"], check=True)  # fmt: skip
    (tmp_path / "libln2dabsent.so.7").unlink()
    error = cuda.load_error(tmp_path / "libneedy.so")
    assert error is not None and "libln2dabsent.so.7" in error
    assert cuda.load_error(Path(ctypes.util.find_library("c"))) is None


def test_prepare_is_safe_without_a_gpu_and_runs_once():
    cuda.prepare()
    cuda.prepare()
    assert cuda.prepare.cache_info().hits >= 1


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this install has the CUDA provider: the refusal cannot be exercised",
)
def test_a_cuda_session_without_the_provider_says_what_to_install():
    with pytest.raises(ProviderNotActive) as refused:
        open_session(classifier(), SessionSettings("cuda"))
    message = str(refused.value)
    assert "\n" not in message and "no CUDA provider" in message
    assert "pip install 'ln2d[serve,gpu]'" in message
