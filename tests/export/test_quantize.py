"""``ln2d quantize`` on real exported models: INT8 in QDQ format, every LayerNorm2d's
statistics left in float, accuracy and agreement against the float model on held-out digits."""

from __future__ import annotations

import json

import httpx
import onnx
import pytest

from ln2d import native
from ln2d.export import metadata
from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import run_cli
from tests.images import digit, png

pytestmark = [pytest.mark.integration, pytest.mark.slow(minutes=2)]


def _quantize(model, out, *args):
    result = run_cli("quantize", str(model), "-o", str(out), "--no-progress", *args)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def unfused_onnx(digits_checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("unfused") / "digits.onnx"
    result = run_cli("export", str(digits_checkpoint), "-o", str(path), "--no-fuse")
    assert result.returncode == 0, result.stderr
    return path


@pytest.mark.parametrize(
    "source", [pytest.param("digits_onnx", marks=pytest.mark.cpu_numerics), "unfused_onnx"]
)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_int8_keeps_accuracy_and_every_norm_in_float(source, per_channel, request, tmp_path):
    model = request.getfixturevalue(source)
    out, report = tmp_path / "int8.onnx", tmp_path / "report.json"
    _quantize(model, out, "--json", str(report), *(["--per-channel"] if per_channel else []))
    numbers = json.loads(report.read_text())
    # 0.2 points (3 of the 1,541 images) on every x86-64 CPU: with the default u8s7 scheme
    # the drop measured -0.06 to 0.00 on AVX-512 VNNI and on AVX2 (docs/benchmarks.md, "INT8
    # schemes"); u8s8 dropped 0.52 on AVX2. 0.99 agreement is ln2d parity's int8 gate.
    assert numbers["scheme"] == "u8s7"
    assert numbers["accuracy_drop_points"] <= 0.2 and numbers["top1_agreement"] >= 0.99
    assert numbers["float_sites"] == 3  # SimpleLN_CNN's three LayerNorm2d
    quantized = onnx.load(out)
    ops = {node.op_type for node in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    _assert_statistics_in_float(quantized)
    meta = {p.key: p.value for p in quantized.metadata_props}
    assert json.loads(meta["ln2d.precision"])["precision"] == "int8"
    assert {"ln2d.name", "ln2d.labels", "ln2d.input"} <= set(meta)  # what the server needs


def _assert_statistics_in_float(model: onnx.ModelProto) -> None:
    """No value a site computes is quantized, and no site node reads a quantized constant.
    (The one site node quantization may take is the centred Conv, which computes the norm's
    input, not its statistics; it reads from outside the site.)"""
    site_nodes = [node for node in model.graph.node if node.name.startswith("ln2d_site_")]
    produced = {output for node in site_nodes for output in node.output}
    float_nodes = [
        n for n in site_nodes if not (n.op_type == "Conv" and n.input[0] not in produced)
    ]
    assert float_nodes
    internal = {output for node in float_nodes for output in node.output}
    initializers = {init.name for init in model.graph.initializer}
    dequantized_constants = {
        node.output[0]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers
    }
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            assert node.input[0] not in internal, f"{node.name} quantizes a norm statistic"
    for node in float_nodes:
        assert not set(node.input) & dequantized_constants, f"{node.name} reads an int8 constant"


def test_quantize_refuses_a_bad_sample_count_in_one_line(digits_onnx, tmp_path):
    result = run_cli("quantize", str(digits_onnx), "-o", str(tmp_path / "q.onnx"), "--samples", "0")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--samples 0" in result.stderr and not (tmp_path / "q.onnx").exists()


def test_parity_holds_an_int8_model_to_answers_and_fails_a_stricter_bound(
    digits_checkpoint, digits_onnx, tmp_path
):
    int8, report = tmp_path / "int8.onnx", tmp_path / "parity.json"
    _quantize(digits_onnx, int8)
    result = run_cli("parity", str(digits_checkpoint), str(int8), "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    parity = json.loads(report.read_text())
    assert parity["precision"] == "int8"
    assert (parity["max_accuracy_drop"], parity["min_agreement"]) == (0.5, 0.99)
    (torch_vs,) = [c for c in parity["comparisons"] if c["name"] == "torch vs onnx[cpu]"]
    assert torch_vs["max_abs"] > parity["atol"]  # not elementwise close: held to answers
    stricter = torch_vs["top1_agreement"] + 1e-6
    result = run_cli("parity", str(digits_checkpoint), str(int8), "--min-agreement", str(stricter))
    assert result.returncode == 1 and "FAIL" in result.stdout


def test_the_server_serves_an_int8_model_and_says_so(digits_onnx, tmp_path):
    int8 = tmp_path / "int8.onnx"
    _quantize(digits_onnx, int8)
    pixels, label = digit(5)
    with ServerProcess(int8) as server:
        model = httpx.get(f"{server.url}/v1/model").json()
        assert model["precision"] == "int8"
        v2 = httpx.get(f"{server.url}/v2/models/{model['name']}").json()
        assert v2["parameters"]["precision"] == "int8"
        answer = httpx.post(
            f"{server.url}/v1/classify", content=png(pixels), headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200 and answer.json()["predictions"][0][0]["label"] == label


def test_fp16_export_keeps_norm_statistics_and_io_in_fp32(digits_checkpoint, tmp_path):
    half = tmp_path / "fp16.onnx"
    result = run_cli("export", str(digits_checkpoint), "-o", str(half), "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    model = onnx.shape_inference.infer_shapes(onnx.load(half))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in model.graph.output})
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert {v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]} == {
        fp32
    }
    # The converter's Casts carry the site's name too: the site's own nodes are the others.
    site_nodes = [
        n for n in model.graph.node if n.name.startswith("ln2d_site_") and n.op_type != "Cast"
    ]
    produced = {output for node in site_nodes for output in node.output}
    statistics = [n for n in site_nodes if not (n.op_type == "Conv" and n.input[0] not in produced)]
    assert statistics and all(types[out] == fp32 for n in statistics for out in n.output)
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    constants = [name for n in statistics for name in n.input if name in initializers]
    assert constants and all(initializers[name] == fp32 for name in constants)  # not via fp16
    layers = [n for n in model.graph.node if n.op_type == "Conv" and n not in statistics]
    assert layers and all(types[n.output[0]] == fp16 for n in layers)
    assert metadata.read(model).precision_name == "fp16"
    report = tmp_path / "parity.json"
    result = run_cli("parity", str(digits_checkpoint), str(half), "--json", str(report))
    assert result.returncode == 0, result.stdout
    parity = json.loads(report.read_text())
    assert (parity["precision"], parity["atol"]) == ("fp16", 1e-2)  # fp16's tolerances


@pytest.mark.parametrize(
    ("target", "is_norm"),
    [
        ("cuda", lambda node: node.op_type == "LayerNormalization"),
        pytest.param(
            "cpu-native",
            lambda node: node.domain == native.DOMAIN,
            marks=pytest.mark.skipif(not native.available(), reason="ln2d.native not compiled"),
        ),
    ],
)
def test_fp16_sites_that_keep_wide_statistics_need_no_island(
    digits_checkpoint, tmp_path, target, is_norm
):
    """LayerNormalization (stash_type 1) and ln2d's native op keep fp32 or wider statistics
    for fp16 input themselves: their sites stay whole in fp16, and the model is cast only at
    its input and output."""
    half = tmp_path / f"{target}-fp16.onnx"
    args = ["--target", target, "--precision", "fp16"]
    result = run_cli("export", str(digits_checkpoint), "-o", str(half), *args)
    assert result.returncode == 0, result.stderr
    model = onnx.shape_inference.infer_shapes(onnx.load(half))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    norms = [node for node in model.graph.node if is_norm(node)]
    assert norms and all(types[node.input[0]] == onnx.TensorProto.FLOAT16 for node in norms)
    assert [node.op_type for node in model.graph.node].count("Cast") == 2
    assert metadata.read(model).precision["float_sites"] == []
    parity = run_cli("parity", str(digits_checkpoint), str(half), "--providers", "cpu")
    assert parity.returncode == 0, parity.stdout


def test_fp16_needs_fusion(digits_checkpoint, tmp_path):
    out = tmp_path / "fp16.onnx"
    result = run_cli(
        "export", str(digits_checkpoint), "-o", str(out), "--precision", "fp16", "--no-fuse"
    )
    assert result.returncode == 2 and "needs fusion" in result.stderr and not out.exists()


def test_parity_compares_precisions_in_one_report(digits_checkpoint, digits_onnx, tmp_path):
    int8, half, report = tmp_path / "int8.onnx", tmp_path / "fp16.onnx", tmp_path / "all.json"
    _quantize(digits_onnx, int8)
    exported = run_cli("export", str(digits_checkpoint), "-o", str(half), "--precision", "fp16")
    assert exported.returncode == 0, exported.stderr
    models = [str(digits_onnx), str(int8), str(half)]
    result = run_cli("parity", str(digits_checkpoint), *models, "--json", str(report))
    assert result.returncode == 0, result.stdout
    reports = json.loads(report.read_text())
    assert [r["precision"] for r in reports] == ["fp32", "int8", "fp16"]
    summary = result.stdout.split("| model | precision |")[1]
    for model, precision in zip(models, ("fp32", "int8", "fp16"), strict=True):
        assert f"| {model} | {precision} | pass |" in summary
