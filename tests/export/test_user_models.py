"""Bring your own model: networks that are not SimpleLN_CNN go through ln2d export, ln2d
parity (bisect included) and ln2d serve from ``--model`` and ``--weights``, and through the
Python API."""

from __future__ import annotations

import json

import httpx
import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from ln2d.export import check_parity, export_module
from ln2d.serve.tools.launcher import ServerProcess
from tests import user_networks
from tests.helpers import run_cli
from tests.images import png

pytestmark = pytest.mark.integration

# factory, --input, LayerNorm2d sites, classifier?
NETWORKS = {
    "convnext_like": ("3x32x32", 6, True),  # stem, downsample, 2 inline, 2 permute
    "unet": ("3x16x16", 3, False),
    "sam_net": ("3x16x16", 2, True),
    "mixed_styles": ("3x64x64", 5, True),  # var_mean after a strided Conv was left decomposed
}


@pytest.fixture(scope="module", params=list(NETWORKS))
def exported(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    module = user_networks.trained_like(getattr(user_networks, name)())
    weights = folder / "weights.safetensors"
    save_file(module.state_dict(), str(weights))
    spec, (shape, sites, classifier) = f"tests.user_networks:{name}", NETWORKS[name]
    out, report = folder / "model.onnx", folder / "fuse.json"
    result = run_cli(
        "export", "--model", spec, "--weights", str(weights), "--input", shape,
        "--mean", ",".join(["0.5"] * 3), "--std", ",".join(["0.25"] * 3),
        "-o", str(out), "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["summary"].get("fused", 0) + data["summary"].get("already_fused", 0) == sites
    assert not data["summary"].get("rejected") and data["verification"]["numerics"]
    return name, spec, weights, out, classifier


def test_parity_passes(exported):
    _, spec, weights, model, _ = exported
    result = run_cli("parity", "--model", spec, "--weights", str(weights), str(model))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch vs onnx[cpu] | pass" in result.stdout


def test_bisect_names_the_corrupted_module(exported, tmp_path):
    _, spec, weights, path, _ = exported
    model = onnx.load(str(path))
    sites = json.loads({p.key: p.value for p in model.metadata_props}["ln2d.fusion"])["sites"]
    target = next(s for s in sites if s["module"])  # a norm that is a module of its own
    _scale_site_weight(model, target["output"])
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    out = tmp_path / "parity.json"
    result = run_cli(
        "parity", "--model", spec, "--weights", str(weights), str(broken), "--bisect",
        "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 1
    first = json.loads(out.read_text())["comparisons"][0]["bisect"]["first_diverging_site"]
    assert first["module"] == target["module"]
    assert f"({target['module']})" in result.stdout


def test_classifiers_serve_and_others_are_refused(exported):
    name, _, _, model, classifier = exported
    if not classifier:
        refused = run_cli("serve", str(model), "--port", "0")
        assert refused.returncode == 2 and "not (N, classes) logits" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        return
    server = ServerProcess(model)
    try:
        pixels = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
        answer = httpx.post(
            f"{server.url}/v1/classify", content=png(pixels), headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == name.replace("_", "")
    finally:
        assert server.stop() == 0


def test_python_api(tmp_path):
    module = user_networks.trained_like(user_networks.sam_net(), seed=3)
    path = tmp_path / "api.onnx"
    report = export_module(
        module, torch.zeros(2, 3, 16, 16), path, labels=list("abcde"),
        preprocessing={"mean": (0.5,) * 3, "std": (0.25,) * 3}, target="cpu",
    )  # fmt: skip
    assert len(report.fused) == 2 and [s.module for s in report.fused] == [
        "features.1", "features.5",
    ]  # fmt: skip
    x = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)
    result = check_parity(module, path, x, providers="cpu", bisect=True)
    assert result.passed and result.comparisons[0].top1_agreement == 1.0
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["ln2d.labels"]) == list("abcde")


def test_export_falls_back_to_torchscript_and_says_so(tmp_path):
    module = user_networks.trained_like(user_networks.DataDependent())
    path = tmp_path / "fallback.onnx"
    report = export_module(module, torch.zeros(2, 3, 8, 8), path)
    (note,) = report.notes
    assert note.startswith("exported by TorchScript at opset 18: the dynamo exporter failed")
    assert len(report.fused) == 1
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["ln2d.fusion"])["notes"] == [note]
    x = np.random.default_rng(0).standard_normal((3, 3, 9, 7)).astype(np.float32)
    assert check_parity(module, path, x, providers="cpu").passed


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "no_such_module:build"], "cannot import 'no_such_module'"),
        (["--model", "tests.user_networks:nothing"], "has no 'nothing'"),
        (["--model", "tests.user_networks"], "expected MODULE:NAME"),
        (["--model", "tests.user_networks:SamLayerNorm2d"], "with no arguments failed"),
    ],
)
def test_bad_model_specs_are_one_line(args, fragment, tmp_path):
    result = run_cli("export", *args, "--input", "3x16x16", "-o", str(tmp_path / "m.onnx"))
    assert result.returncode == 2 and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    state = user_networks.sam_net().state_dict()
    cases = {
        "missing": {k: v for k, v in state.items() if not k.startswith("head")},
        "unexpected": {**state, "extra.weight": torch.zeros(1)},
        "shape": {**state, "head.2.bias": torch.zeros(7)},
    }
    for case, fragment in [("missing", "missing 2 key(s): head.2.bias, head.2.weight"),
                           ("unexpected", "unexpected 1 key(s): extra.weight"),
                           ("shape", "head.2.bias has shape (7,)")]:  # fmt: skip
        weights = tmp_path / f"{case}.safetensors"
        save_file(cases[case], str(weights))
        result = run_cli(
            "export", "--model", "tests.user_networks:sam_net", "--weights", str(weights),
            "--input", "3x16x16", "-o", str(tmp_path / "m.onnx"),
        )  # fmt: skip
        assert result.returncode == 2 and fragment in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def _scale_site_weight(model: onnx.ModelProto, output: str) -> None:
    """Multiply the per-channel weight the node writing ``output`` (or the LayerNormalization
    feeding its Transpose) uses by 1.5."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers[output]
    if node.op_type == "Transpose":
        node = producers[node.input[0]]
    initializers = {i.name: i for i in model.graph.initializer}
    scale = initializers[node.input[1]]
    array = onnx.numpy_helper.to_array(scale) * 1.5
    scale.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), scale.name))


@pytest.mark.parametrize(("target", "precision"), [("cpu", "fp32"), ("cuda", "fp16")])
def test_the_python_api_writes_what_the_command_writes(tmp_path, target, precision):
    """export_module and ``ln2d export --model`` share their defaults: the opset each target
    gets unless told (21 for cuda), the precision, the metadata."""

    module = user_networks.trained_like(user_networks.sam_net(), seed=3)
    weights = tmp_path / "weights.safetensors"
    save_file(module.state_dict(), str(weights))
    api, cli = tmp_path / "api.onnx", tmp_path / "cli.onnx"
    example = torch.zeros(2, 3, 16, 16)
    export_module(module, example, api, target=target, precision=precision, name="sam_net")
    result = run_cli(
        "export", "--model", "tests.user_networks:sam_net", "--weights", str(weights),
        "--input", "3x16x16", "--target", target, "--precision", precision, "-o", str(cli),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = [onnx.load(str(path)) for path in (api, cli)]
    opsets = [next(o.version for o in m.opset_import if o.domain == "") for m in written]
    props = [{p.key: p.value for p in m.metadata_props} for m in written]
    assert opsets[0] == opsets[1] == (21 if target == "cuda" else 23)
    for key in ("ln2d.input", "ln2d.labels", "ln2d.precision", "ln2d.fusion"):
        assert props[0].get(key) == props[1].get(key), key
