"""ln2d export / fuse / parity as a user runs them, on a real trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.conftest import run_cli
from tests.onnx_helpers import initializers, layernorm_nodes


@pytest.fixture(scope="module")
def exported(digits_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    model, report = out / "model.onnx", out / "fuse.json"
    result = run_cli("export", str(digits_checkpoint), "-o", str(model), "--report", str(report))
    assert result.returncode == 0, result.stderr
    return model, report


def test_export_writes_fused_model_with_metadata(exported, digits_checkpoint):
    path, report_path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert len(layernorm_nodes(model)) == 3
    assert not any(n.op_type == "ReduceMean" and n.input for n in model.graph.node[:5])
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["ln2d.labels"]) == [str(i) for i in range(10)]
    pre = json.loads(meta["ln2d.input"])
    assert (pre["channels"], pre["height"], pre["width"]) == (1, 16, 16)
    assert meta["ln2d.eps"] == "1e-06"
    assert json.loads(meta["ln2d.fusion"])["fused"] == 3
    assert len(meta["ln2d.checkpoint_sha256"]) == 64
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][1] == 1
    assert all(d.dim_param for i, d in enumerate(dims) if i != 1)  # dynamic N, H, W
    report = json.loads(report_path.read_text())
    assert report["summary"]["fused"] == 3 and len(report["sites"]) == 3


def test_parity_passes_and_reports(exported, digits_checkpoint, tmp_path):
    path, _ = exported
    out = tmp_path / "parity.json"
    result = run_cli("parity", str(digits_checkpoint), str(path), "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    torch_cpu = report["comparisons"][0]
    assert torch_cpu["name"] == "torch vs onnx[cpu]" and torch_cpu["status"] == "pass"
    assert torch_cpu["max_abs"] <= 1e-5 and torch_cpu["top1_agreement"] == 1.0
    assert torch_cpu["accuracy"] >= 0.97
    assert any(c["status"].startswith("skipped: no CUDA") for c in report["comparisons"]) or any(
        c["name"] == "torch vs onnx[cuda]" and c["status"] == "pass" for c in report["comparisons"]
    )


def test_parity_requested_cuda_never_passes_silently(exported, digits_checkpoint):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the skip path cannot be exercised")
    path, _ = exported
    result = run_cli("parity", str(digits_checkpoint), str(path), "--providers", "cpu,cuda")
    assert result.returncode == 1
    assert "skipped: no CUDAExecutionProvider" in result.stdout and "FAIL" in result.stdout


def test_parity_fails_on_broken_model_and_bisect_names_the_site(
    exported, digits_checkpoint, tmp_path
):
    path, _ = exported
    model = onnx.load(str(path))
    second = layernorm_nodes(model)[1]
    for init in model.graph.initializer:
        if init.name == second.input[1]:  # scale of LayerNorm2d site 1
            broken = initializers(model)[init.name] * 1.5
            init.CopyFrom(onnx.numpy_helper.from_array(broken.astype(np.float32), init.name))
    bad = tmp_path / "broken.onnx"
    onnx.save(model, str(bad))
    out = tmp_path / "parity.json"
    result = run_cli("parity", str(digits_checkpoint), str(bad), "--bisect", "--json", str(out))
    assert result.returncode == 1, result.stdout
    bisect = json.loads(out.read_text())["comparisons"][0]["bisect"]
    assert bisect["first_diverging_site"]["site"] == 1
    assert "first divergence at LayerNorm2d site 1" in result.stdout


def test_fuse_cli_on_unfused_export(digits_checkpoint, tmp_path):
    plain = tmp_path / "plain.onnx"
    assert run_cli("export", str(digits_checkpoint), "-o", str(plain), "--no-fuse").returncode == 0
    assert not layernorm_nodes(onnx.load(str(plain)))
    fused = tmp_path / "fused.onnx"
    result = run_cli("fuse", str(plain), "-o", str(fused))
    assert result.returncode == 0, result.stderr
    assert "3 fused" in result.stdout
    assert len(layernorm_nodes(onnx.load(str(fused)))) == 3


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"not onnx at all", "not a readable ONNX model"), (None, "does not exist")],
)
def test_fuse_malformed_input(tmp_path, content, fragment):
    path = tmp_path / "in.onnx"
    if content is not None:
        path.write_bytes(content)
    result = run_cli("fuse", str(path), "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and fragment in result.stderr


def test_fuse_truncated_and_old_opset(exported, tmp_path):
    path, _ = exported
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(path.read_bytes()[:2000])
    result = run_cli("fuse", str(truncated), "-o", str(tmp_path / "o.onnx"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    old = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 11)],
    )
    onnx.save(old, str(tmp_path / "old.onnx"))
    result = run_cli("fuse", str(tmp_path / "old.onnx"), "-o", str(tmp_path / "o.onnx"))
    assert result.returncode == 2 and "opset 11" in result.stderr
