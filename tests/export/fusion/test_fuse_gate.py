"""The gate in front of every written model, the tuner, --opset, and the defaults the CLI
and the Python API share."""

from __future__ import annotations

import inspect
import json

import numpy as np
import onnx
import pytest
import torch

from ln2d import native
from ln2d.cli import main
from ln2d.export import commands
from ln2d.export.fusion import FusionError, forms, fuse_model
from ln2d.export.fusion.targets import DEFAULT_TARGET, TARGETS
from ln2d.export.onnx_export import export_checkpoint
from tests import norm_styles
from tests.helpers import run_cli
from tests.onnx_helpers import export, layernorm_nodes, run

pytestmark = pytest.mark.integration

C = 12


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory) -> tuple[torch.nn.Module, str]:
    """Conv -> LayerNorm2d -> ReLU -> Conv, exported at opset 15 by TorchScript."""
    module = norm_styles.Wrapped(norm_styles.Explicit(C, 1e-6, "index"), C).eval()
    path = tmp_path_factory.mktemp("gate") / "wrapped15.onnx"
    onnx.save(export(module, torch.randn(2, 3, 8, 8), "torchscript", 15), str(path))
    return module, str(path)


def _wrong_eps(op, x, scale, bias, epsilon, opset):
    """A form that computes something else: epsilon 1000x too large."""
    return forms.reduce_moments(op, x, scale, bias, epsilon * 1e3 + 0.5, opset)


def _axes_as_input(op, x, scale, bias, epsilon, opset):
    """A form written for opset 18 whatever the graph's opset: invalid below 18."""
    return forms.reduce_moments(op, x, scale, bias, epsilon, 18)


@pytest.mark.parametrize(
    ("form", "step"), [(_wrong_eps, "numerics"), (_axes_as_input, "onnx.checker")]
)
def test_gate_names_the_step_and_the_site_and_writes_nothing(
    wrapped, tmp_path, monkeypatch, capsys, form, step
):
    monkeypatch.setitem(forms.FORMS, "reduce_moments", form)
    _, path = wrapped
    with pytest.raises(FusionError, match=rf"failed {step} .*ln2d_site_0"):
        fuse_model(onnx.load(path), "portable")  # opset 15: portable falls back to reduce_moments
    out = tmp_path / "out.onnx"
    assert main(["fuse", path, "-o", str(out), "--target", "portable"]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"ln2d fuse: error: fused model failed {step}") and "site" in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_file(wrapped, tmp_path, monkeypatch):
    _, path = wrapped
    out = tmp_path / "out.onnx"
    out.write_bytes(b"the previous model")
    monkeypatch.setitem(forms.FORMS, "reduce_moments", _wrong_eps)
    assert main(["fuse", path, "-o", str(out), "--target", "portable"]) == 1
    assert out.read_bytes() == b"the previous model"


def test_cli_and_api_defaults_are_equal():
    from ln2d.export.fusion.files import FuseFileOptions
    from ln2d.export.onnx_export import export_module

    assert commands.DEFAULT_TARGET == DEFAULT_TARGET
    assert tuple(TARGETS) == commands.TARGETS
    for api in (export_checkpoint, export_module, fuse_model):
        parameters = inspect.signature(api).parameters
        target = parameters["target" if "target" in parameters else "choose"]
        assert target.default == DEFAULT_TARGET, api.__name__
    assert FuseFileOptions().target == DEFAULT_TARGET


def test_opset_is_raised_only_on_request(wrapped, tmp_path):
    module, path = wrapped
    out = tmp_path / "raised.onnx"
    kept = run_cli("fuse", path, "-o", str(out), "--target", "portable")
    assert kept.returncode == 0, kept.stderr
    assert "opset 15 has no LayerNormalization" in kept.stdout
    assert not layernorm_nodes(onnx.load(str(out)))
    raised = run_cli("fuse", path, "-o", str(out), "--target", "portable", "--opset", "17")
    assert raised.returncode == 0, raised.stderr
    model = onnx.load(str(out))
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]
    assert len(layernorm_nodes(model)) == 1
    x = torch.randn(2, 3, 10, 6)
    np.testing.assert_allclose(run(model, x.numpy()), module(x).detach().numpy(), atol=2e-5)
    lower = run_cli("fuse", path, "-o", str(out), "--opset", "13")
    assert lower.returncode == 2 and "can only be raised" in lower.stderr


def test_tune_times_every_form_and_records_it(wrapped, tmp_path):
    module, path = wrapped
    out, report = tmp_path / "tuned.onnx", tmp_path / "tune.json"
    result = run_cli(
        "fuse", path, "-o", str(out), "--tune", "--shape", "1,3,16,16", "--shape", "4,3,8,8",
        "--report", str(report), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    tuning = data["tuning"]
    assert tuning["shapes"] == [[1, 3, 16, 16], [4, 3, 8, 8]]
    assert set(tuning["median_ms"]) == {"tuned", "input", "input (A/A)"}
    (site,) = data["sites"]
    # Opset 15: no LayerNormalization; the original form is always a candidate, and ln2d's own
    # kernel is one more where this install has it.
    assert set(site["timings_ms"]) == {
        "reduce_div", "channel_moments", "reduce_moments", "conv_moments", "centred_conv",
        *(["native"] if native.available() else []),
    }  # fmt: skip
    assert site["form"] in site["timings_ms"] and site["why"].startswith("tune: ")
    model = onnx.load(str(out))
    if tuning["result"] == "input kept":
        assert model.graph == onnx.load(path).graph
    else:
        assert tuning["tuned_over_input"] < 1
        fusion = json.loads({p.key: p.value for p in model.metadata_props}["ln2d.fusion"])
        assert fusion["target"] == "tune" and fusion["sites"][0]["timings_ms"]
    x = torch.randn(2, 3, 12, 12)
    np.testing.assert_allclose(run(model, x.numpy()), module(x).detach().numpy(), atol=2e-5)


def test_shape_needs_tune(wrapped, tmp_path):
    _, path = wrapped
    result = run_cli("fuse", path, "-o", str(tmp_path / "o.onnx"), "--shape", "1,3,8,8")
    assert result.returncode == 2 and "--shape only applies with --tune" in result.stderr


def test_a_graph_that_gives_nan_itself_passes_the_gate_unchanged():
    # A network that is no LayerNorm may give NaN on the gate's random inputs (a square root
    # of a negative number): the gate holds the result to the same NaNs, not to none.
    from onnx import TensorProto, helper

    shape = ["n", C, "h", "w"]
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["y"])],
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    fused, report = fuse_model(model, "cpu")
    assert not report.sites and report.verification["numerics"]["status"] == "pass"
    assert fused.SerializeToString() == model.SerializeToString()
