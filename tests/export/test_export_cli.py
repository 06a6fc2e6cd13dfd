"""ln2d export / fuse / parity as a user runs them, on a real trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.helpers import run_cli
from tests.onnx_helpers import initializers, layernorm_nodes, run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(digits_checkpoint, tmp_path_factory):
    """The default export (``--target cpu``) and its fusion report."""
    out = tmp_path_factory.mktemp("onnx")
    model, report = out / "model.onnx", out / "fuse.json"
    result = run_cli("export", str(digits_checkpoint), "-o", str(model), "--report", str(report))
    assert result.returncode == 0, result.stderr
    return model, report


@pytest.fixture(scope="module")
def portable(digits_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "portable.onnx"
    result = run_cli("export", str(digits_checkpoint), "-o", str(path), "--target", "portable")
    assert result.returncode == 0, result.stderr
    return path


def test_export_writes_fused_model_with_metadata(exported, digits_checkpoint):
    path, report_path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert "Div" not in ops and "Pow" not in ops and "LayerNormalization" not in ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["ln2d.labels"]) == [str(i) for i in range(10)]
    pre = json.loads(meta["ln2d.input"])
    assert (pre["channels"], pre["height"], pre["width"]) == (1, 16, 16)
    assert meta["ln2d.eps"] == "1e-06"
    fusion = json.loads(meta["ln2d.fusion"])
    assert fusion["fused"] == 3 and fusion["target"] == "cpu"
    assert "ln2d.requires" not in meta  # standard ops only: any ONNX runtime loads it
    # Each site's input is a Conv that feeds only the norm: its mean folds into the Conv.
    assert [s["form"] for s in fusion["sites"]] == ["centred_conv"] * 3
    assert all(s["why"].startswith("cpu: input is a Conv output") for s in fusion["sites"])
    assert len(meta["ln2d.checkpoint_sha256"]) == 64
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][1] == 1
    assert all(d.dim_param for i, d in enumerate(dims) if i != 1)  # dynamic N, H, W
    report = json.loads(report_path.read_text())
    assert report["summary"]["fused"] == 3 and len(report["sites"]) == 3
    assert all(site["centrable"] and site["form"] == "centred_conv" for site in report["sites"])


def test_portable_target_is_one_layernormalization_per_site(portable):
    model = onnx.load(str(portable))
    assert len(layernorm_nodes(model)) == 3
    assert json.loads({p.key: p.value for p in model.metadata_props}["ln2d.fusion"])["target"] == (
        "portable"
    )


def test_cpu_and_portable_targets_compute_the_same_logits(exported, portable):
    x = np.random.default_rng(0).standard_normal((5, 1, 16, 16), dtype=np.float32)
    cpu, reference = (run(onnx.load(str(path)), x) for path in (exported[0], portable))
    np.testing.assert_allclose(cpu, reference, atol=1e-5)


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


def test_parity_zero_tolerance_means_exact(exported, digits_checkpoint, tmp_path):
    path, _ = exported
    out = tmp_path / "parity.json"
    result = run_cli(
        "parity", str(digits_checkpoint), str(path), "--atol", "0", "--rtol", "0",
        "--json", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert (report["atol"], report["rtol"]) == (0, 0)
    # fp32 PyTorch and ONNX Runtime sum in other orders: not bit-equal, so exact parity fails.
    torch_vs = report["comparisons"][0]
    assert torch_vs["max_abs"] > 0 and torch_vs["status"] == "FAIL"
    assert result.returncode == 1


def test_parity_requested_cuda_never_passes_silently(exported, digits_checkpoint):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the skip path cannot be exercised")
    path, _ = exported
    result = run_cli("parity", str(digits_checkpoint), str(path), "--providers", "cpu,cuda")
    assert result.returncode == 1
    assert "skipped: no CUDAExecutionProvider" in result.stdout and "FAIL" in result.stdout


@pytest.mark.parametrize("target", ["cpu", "portable"])
def test_parity_fails_on_broken_model_and_bisect_names_the_site(
    exported, portable, digits_checkpoint, tmp_path, target
):
    model = onnx.load(str(exported[0] if target == "cpu" else portable))
    sites = json.loads({p.key: p.value for p in model.metadata_props}["ln2d.fusion"])["sites"]
    # The node that writes site 1's output: LayerNormalization's is one Transpose further.
    (writer,) = [n for n in model.graph.node if sites[1]["output"] in n.output]
    if target == "portable":
        writer = layernorm_nodes(model)[1]
    for init in model.graph.initializer:
        if init.name == writer.input[1]:  # scale of LayerNorm2d site 1
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
    result = run_cli("fuse", str(plain), "-o", str(fused), "--target", "portable")
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
        ir_version=10,  # onnx's newest (14) is more than ONNX Runtime 1.31 (the GPU build) reads
    )
    onnx.save(old, str(tmp_path / "old.onnx"))
    result = run_cli("fuse", str(tmp_path / "old.onnx"), "-o", str(tmp_path / "o.onnx"))
    assert result.returncode == 2 and "opset 11" in result.stderr


def test_parity_without_a_model_file_after_ckpt_says_so(tmp_path):
    # A checkpoint and no --model: no ONNX file is left to compare (ONNX files alone would be
    # replayed against their own records).
    result = run_cli("parity", str(tmp_path / "model.safetensors"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ln2d parity: error: give CKPT and one or more MODEL.onnx, or --model with MODEL.onnx"
    )
