"""``ln2d fuse`` on models of every size, in real processes: a generated model past protobuf's
2 GB and timm's convnext_base fuse with parity, in at most three times their weights' size of
resident memory (the kernel's count for the process); ``ln2d bench-fuse`` reports it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ln2d.export.bench_fuse import fuse_once, weights_bytes
from ln2d.export.large_model import write_model
from ln2d.export.onnx_io import PROTOBUF_LIMIT
from tests.helpers import run_cli
from tests.third_party import install_torchvision_placeholder

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=1.5)]

MEMORY_GOAL = 3.0  # peak resident memory over the weights' size


def _logits(path, x: np.ndarray) -> np.ndarray:
    """One session at a time: two of a 2 GB model would be the memory this test bounds."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _fused_sites(path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return len({n.name.split("/")[0] for n in model.graph.node if n.name.startswith("ln2d_site_")})


def test_a_model_past_2_gb_fuses_with_parity_in_under_3x_its_size(tmp_path):
    source = tmp_path / "wide.onnx"
    size = write_model(source, 2.05)
    assert size > PROTOBUF_LIMIT
    fused = tmp_path / "fused" / "wide.onnx"
    run = fuse_once(source, fused, "--no-progress")
    assert run.exit_code == 0, run.stderr
    assert (fused.parent / "wide.onnx.data").is_file() and fused.stat().st_size < 1 << 20
    norms = [
        n
        for n in onnx.load(str(source), load_external_data=False).graph.node
        if n.name.endswith("norm.mean")
    ]
    assert _fused_sites(fused) == len(norms) > 1
    assert run.peak_bytes <= MEMORY_GOAL * size, f"{run.peak_bytes / size:.2f}x"
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = _logits(source, x)
    np.testing.assert_allclose(_logits(fused, x), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_convnext_base_fuses_inline_in_under_3x_its_size(tmp_path):
    install_torchvision_placeholder()
    import timm

    network = timm.create_model("convnext_base", pretrained=False).eval()
    source = tmp_path / "convnext_base.onnx"
    x = torch.randn(1, 3, 224, 224)
    axes = {"x": {0: "n"}}
    torch.onnx.export(network, (x,), str(source), dynamo=False, opset_version=17,
                      input_names=["x"], dynamic_axes=axes)  # fmt: skip
    size = weights_bytes(source)
    fused = tmp_path / "fused.onnx"
    run = fuse_once(source, fused, "--no-progress")
    assert run.exit_code == 0, run.stderr
    assert not (tmp_path / "fused.onnx.data").exists()  # inline in, inline out
    assert run.peak_bytes <= MEMORY_GOAL * size, f"{run.peak_bytes / size:.2f}x"
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    want = network(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_logits(fused, x), want, rtol=1e-3, atol=1e-3)


def test_external_data_is_written_on_request(tmp_path):
    source = tmp_path / "small.onnx"
    write_model(source, 0.01, width=64)
    inline = tmp_path / "inline.onnx"
    onnx.save(onnx.load(str(source)), str(inline))  # the same model, weights inline
    result = run_cli("fuse", str(inline), "-o", str(tmp_path / "out.onnx"), "--external-data")
    assert result.returncode == 0, result.stderr
    assert "and out.onnx.data" in result.stdout and (tmp_path / "out.onnx.data").is_file()


def test_bench_fuse_prints_a_table_and_writes_json(tmp_path):
    result = run_cli(
        "bench-fuse", "--generate", "0.02", "--repeats", "2", "--json", str(tmp_path / "b.json"),
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| wide_convnext_0.02gb.onnx |" in result.stdout and "A/A" in result.stdout
    (row,) = json.loads((tmp_path / "b.json").read_text())
    assert len(row["runs"]) == 2 and all(r["exit_code"] == 0 for r in row["runs"])
    assert row["peak_rss_bytes"] > row["weights_bytes"] > 0.02 * 2**30
