"""The native LayerNorm2d kernel (``ln2d.native``) in real ONNX Runtime sessions, against
PyTorch's LayerNorm2d: shapes and epsilons from Hypothesis, NaN and Inf, thread counts, memory
over many runs, and a runtime too old for it refused in one readable line."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from ln2d import native
from ln2d.layers import LayerNorm2d
from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import run_cli
from tests.images import digit, png

pytestmark = pytest.mark.skipif(not native.available(), reason="ln2d.native was not compiled")


def _model(channels: int, epsilon: float, dtype=np.float32) -> bytes:
    node = helper.make_node(
        native.OP, ["x", "scale", "bias"], ["y"], domain=native.DOMAIN, epsilon=epsilon
    )
    shape = ["N", channels, "H", "W"]
    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        [node],
        "layernorm2d",
        [
            helper.make_tensor_value_info("x", element, shape),
            helper.make_tensor_value_info("scale", element, [channels]),
            helper.make_tensor_value_info("bias", element, [channels]),
        ],
        [helper.make_tensor_value_info("y", element, shape)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(native.DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _session(channels: int, epsilon: float, threads: int = 1, dtype=np.float32):
    options = native.session_options()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(
        _model(channels, epsilon, dtype), options, providers=["CPUExecutionProvider"]
    )


def _torch(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, epsilon: float) -> np.ndarray:
    norm = LayerNorm2d(x.shape[1], eps=epsilon).to(torch.from_numpy(x).dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(scale))
        norm.bias.copy_(torch.from_numpy(bias))
        return norm(torch.from_numpy(x)).numpy()


def _run(session, x, scale, bias) -> np.ndarray:
    return session.run(None, {"x": x, "scale": scale, "bias": bias})[0]


@pytest.mark.cpu_numerics
# The level is set once for all examples, which is what the fixture check warns about.
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(0, 3),
    channels=st.integers(1, 40),
    height=st.integers(1, 9),
    width=st.integers(1, 300),
    epsilon=st.sampled_from([1e-6, 1e-5, 1e-3, 0.1]),
    offset=st.floats(-100, 100),
    spread=st.floats(1e-2, 1e2),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float16]),
)
def test_matches_pytorch(
    native_level, batch, channels, height, width, epsilon, offset, spread, seed, dtype
):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, channels, height, width)) * spread + offset).astype(dtype)
    scale = rng.uniform(0.5, 1.5, channels).astype(dtype)
    bias = rng.uniform(-1, 1, channels).astype(dtype)
    got = _run(_session(channels, epsilon, dtype=dtype), x, scale, bias)
    assert native.level() == native_level
    assert got.shape == x.shape and got.dtype == dtype
    exact = _torch(*(a.astype(np.float64) for a in (x, scale, bias)), epsilon)
    pytorch = _torch(x, scale, bias, epsilon)
    ours, theirs = np.abs(got - exact), np.abs(pytorch.astype(np.float64) - exact)
    if dtype == np.float32:
        # As close to the exact result as PyTorch's own fp32 is, within a small factor: a pixel
        # whose channels nearly agree is ill-conditioned in fp32 for any implementation.
        bound = 4 * theirs + 2e-5 * (1 + np.abs(exact))
    else:
        # fp16 in and out, statistics in fp32 or wider: within two fp16 steps of the exact
        # result plus what fp32 arithmetic on (x - mean) * inverse * scale + bias may lose (a
        # few fp32 steps of its terms), or as close as PyTorch, whose fp16 statistics are fp16.
        wide = x.astype(np.float64)
        mean = wide.mean(axis=1, keepdims=True)
        inverse = 1 / np.sqrt(wide.var(axis=1, keepdims=True) + epsilon)
        terms = (np.abs(wide) + np.abs(mean)) * inverse * np.abs(scale)[:, None, None]
        arithmetic = 2.0**-21 * (terms + np.abs(bias)[:, None, None])
        steps = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
        bound = np.maximum(2 * steps + arithmetic, theirs)
    assert np.all(ours <= bound), float((ours - bound).max())


@pytest.mark.cpu_numerics
def test_nan_and_inf_poison_their_pixel_as_in_pytorch():
    x = np.random.default_rng(0).standard_normal((1, 4, 2, 3)).astype(np.float32)
    x[0, 1, 0, 0], x[0, 2, 1, 2], x[0, 0, 1, 0] = np.nan, np.inf, -np.inf
    scale, bias = np.ones(4, np.float32), np.zeros(4, np.float32)
    got, want = _run(_session(4, 1e-6), x, scale, bias), _torch(x, scale, bias, 1e-6)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.cpu_numerics
def test_one_and_two_threads_give_the_same_bits():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64, 28, 28)).astype(np.float32)
    scale, bias = (
        rng.standard_normal(64).astype(np.float32),
        rng.standard_normal(64).astype(np.float32),
    )
    one = _run(_session(64, 1e-6, threads=1), x, scale, bias)
    two = _run(_session(64, 1e-6, threads=2), x, scale, bias)
    np.testing.assert_array_equal(one, two)


def test_no_memory_growth_over_ten_thousand_runs():
    session = _session(8, 1e-6)
    x = np.ones((2, 8, 4, 4), np.float32)
    scale, bias = np.ones(8, np.float32), np.zeros(8, np.float32)
    for _ in range(1000):  # the steady state: arenas and caches warmed
        _run(session, x, scale, bias)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(10_000):
        _run(session, x, scale, bias)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 2048, f"peak RSS grew by {grown_kib} KiB over 10,000 runs"


def test_a_runtime_without_the_api_version_is_refused_in_one_line():
    """RegisterCustomOps, called as ONNX Runtime calls it, by a runtime that offers no table of
    the version the library needs (only the oldest): a status with one readable line comes
    back, and nothing crashes."""
    library = ctypes.CDLL(str(native.library()))
    messages: list[str] = []
    create_status = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)(
        lambda code, message: messages.append(message.decode()) or 1
    )
    oldest_table = (ctypes.c_void_p * 1)(ctypes.cast(create_status, ctypes.c_void_p))
    get_api = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint32)(
        lambda version: ctypes.addressof(oldest_table) if version == 1 else None
    )
    version_string = ctypes.CFUNCTYPE(ctypes.c_char_p)(lambda: b"0.0.0")

    class ApiBase(ctypes.Structure):
        _fields_ = [("get_api", type(get_api)), ("version_string", type(version_string))]

    register = library.RegisterCustomOps
    register.restype, register.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]
    status = register(None, ctypes.addressof(ApiBase(get_api, version_string)))
    assert status == 1  # what our CreateStatus returned: an error status, not success (NULL)
    (message,) = messages
    # 17: the C API version that brought KernelContext_ParallelFor (ONNX Runtime 1.17)
    assert "needs onnxruntime 1.17 or newer" in message and "\n" not in message


@pytest.fixture(scope="module")
def native_onnx(digits_checkpoint, tmp_path_factory):
    model = tmp_path_factory.mktemp("native") / "native.onnx"
    result = run_cli("export", str(digits_checkpoint), "-o", str(model), "--target", "cpu-native")
    assert result.returncode == 0, result.stderr
    assert "-> native" in result.stdout
    return model


@pytest.mark.integration
def test_a_cpu_native_export_passes_parity_and_is_served(digits_checkpoint, native_onnx):
    model = onnx.load(native_onnx)
    ops = {(node.domain, node.op_type) for node in model.graph.node}
    assert (native.DOMAIN, native.OP) in ops
    assert {p.key: p.value for p in model.metadata_props}["ln2d.requires"] == "ln2d.native"
    parity = run_cli("parity", str(digits_checkpoint), str(native_onnx), "--providers", "cpu")
    assert parity.returncode == 0, parity.stdout
    pixels, label = digit(7)
    with ServerProcess(native_onnx) as server:
        answer = httpx.post(
            f"{server.url}/v1/classify", content=png(pixels), headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200 and answer.json()["predictions"][0][0]["label"] == label


@pytest.mark.integration
def test_a_native_model_without_the_library_fails_in_one_line(native_onnx):
    """Where the library is missing (here: hidden by replacing ``native.library``), ln2d serve
    exits 2 with one line that says how to get it."""
    code = (
        "import sys, ln2d.native as n; n.library = lambda: None; "
        "from ln2d.cli import main; sys.exit(main(['serve', sys.argv[1], '--port', '0']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(native_onnx)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert "ai.ln2d::LayerNorm2d" in line and "C compiler" in line


def test_ln2d_native_library_names_another_build(monkeypatch, tmp_path):
    """make test-sanitized points ln2d at its own build this way; a name that is no file means
    no library, never the installed one in its place."""
    installed = native.library()
    copy = tmp_path / "copy.so"
    copy.write_bytes(installed.read_bytes())
    monkeypatch.setenv(native.LIBRARY_VARIABLE, str(copy))
    assert native.library() == copy
    monkeypatch.setenv(native.LIBRARY_VARIABLE, str(tmp_path / "absent.so"))
    assert native.library() is None and not native.available()


@pytest.mark.cpu_numerics
def test_the_level_variable_picks_the_clone_and_an_unknown_one_the_widest():
    """LN2D_NATIVE_LEVEL, read by the libraries themselves when a process first uses them."""
    widest = native.cpu_levels()[-1]
    for asked, expected in [*((n, n) for n in native.cpu_levels()), ("x86-64-v9", widest)]:
        result = subprocess.run(
            [sys.executable, "-c", "from ln2d import native; print(native.level())"],
            env={**os.environ, native.LEVEL_VARIABLE: asked},
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == expected


@pytest.mark.cpu_numerics
def test_a_level_this_cpu_lacks_is_refused_and_nothing_changes():
    before = native.level()
    with pytest.raises(ValueError, match="this CPU runs"):
        native.set_level("x86-64-v9")
    assert native.level() == before


@pytest.mark.integration
def test_a_native_model_fuses_for_other_targets_and_quantizes(native_onnx, tmp_path):
    """Native sites are sites already fused: ln2d fuse lowers them for another target, and
    ln2d quantize keeps them in float as standard ops (its quantizer runs without the library)."""
    portable = tmp_path / "portable.onnx"
    fused = run_cli("fuse", str(native_onnx), "-o", str(portable), "--target", "portable")
    assert fused.returncode == 0, fused.stderr
    assert "3 LayerNorm2d candidate site(s): 0 fused, 3 already fused" in fused.stdout
    ops = [node.op_type for node in onnx.load(portable).graph.node]
    assert ops.count("LayerNormalization") == 3 and "LayerNorm2d" not in ops
    int8 = tmp_path / "int8.onnx"
    quantized = run_cli("quantize", str(native_onnx), "-o", str(int8), "--no-progress")
    assert quantized.returncode == 0, quantized.stderr
    assert all(node.domain != native.DOMAIN for node in onnx.load(int8).graph.node)
