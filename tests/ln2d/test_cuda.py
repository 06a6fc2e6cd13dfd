"""Finding CUDA without torch (``ln2d.cuda``): which libraries a process cannot load, and the
one line a CUDA session that did not get its provider raises. The GPU side of it runs in
``make gpu-check`` on a GPU machine."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from ln2d import cuda
from ln2d.runtime import ProviderNotActive, SessionSettings, open_session
from tests.tiny_models import classifier


def test_missing_names_the_libraries_this_process_cannot_load():
    assert cuda.missing(("libc.so.6", "libln2d-absent.so.1")) == ["libln2d-absent.so.1"]


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
