"""The parity record every writer puts in a model (``export/record.py``), and ``ln2d parity
MODEL.onnx`` replaying it with no checkpoint: real exports, fusions and quantizations of the
trained digits model, through the real command line."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from ln2d import machine
from ln2d.export import metadata
from tests.helpers import run_cli, with_moved_record

pytestmark = pytest.mark.integration


def _record(path):
    return metadata.read(onnx.load(path)).parity_record


def _replay(path, *args):
    return run_cli("parity", str(path), "--providers", "cpu", *args)


@pytest.mark.cpu_numerics
def test_export_records_real_digits_and_pytorchs_logits_and_parity_replays_them(
    digits_onnx, tmp_path
):
    record = _record(digits_onnx)
    (x,) = record.inputs.values()
    (logits,) = record.expected
    assert x.shape[0] == 8 and logits.shape == (8, 10)
    assert len(np.unique(logits.argmax(1))) >= 6  # real digits 0..7: mostly told apart
    assert (record.atol, record.rtol, record.reference) == (1e-4, 1e-4, "PyTorch")
    assert record.recorded_on["machine"] == machine.describe()["machine"] and record.ratio < 1
    report = tmp_path / "replay.json"
    result = _replay(digits_onnx, "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| cpu | pass |" in result.stdout
    replayed = json.loads(report.read_text())["replays"]["cpu"]
    assert replayed["passed"] and replayed["ratio"] < 1


def test_a_record_the_model_no_longer_meets_fails_the_replay(digits_onnx, tmp_path):
    """The same model with each recorded logit moved by 0.01: the replay measures that."""
    drifted = with_moved_record(digits_onnx, tmp_path / "drifted.onnx", shift=0.01)
    result = _replay(drifted)
    assert result.returncode == 1 and "| cpu | FAIL | 0.01 |" in result.stdout


def test_a_model_without_a_record_is_one_line_naming_the_checkpoint_route(tmp_path):
    from tests.tiny_models import classifier

    bare = tmp_path / "bare.onnx"
    onnx.save(classifier(), bare)
    result = _replay(bare)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "carries no parity record" in result.stderr and "ln2d parity CKPT" in result.stderr


@pytest.mark.cpu_numerics
def test_fp16_export_records_pytorchs_fp32_logits_at_fp16_tolerance(fp16_onnx):
    record = _record(fp16_onnx)
    assert (record.atol, record.rtol, record.reference) == (1e-2, 1e-2, "PyTorch")
    result = _replay(fp16_onnx)
    assert result.returncode == 0, result.stdout


def test_fuse_keeps_the_exports_record_and_checks_it_on_the_fused_graph(
    digits_checkpoint, tmp_path
):
    unfused, fused = tmp_path / "unfused.onnx", tmp_path / "fused.onnx"
    exported = run_cli("export", str(digits_checkpoint), "-o", str(unfused), "--no-fuse")
    assert exported.returncode == 0, exported.stderr
    result = run_cli("fuse", str(unfused), "-o", str(fused), "--report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    before, after = _record(unfused), _record(fused)
    assert after.reference == "PyTorch" and after.ratio is None  # checked by the gate
    for a, b in zip(after.expected, before.expected, strict=True):
        assert a.tobytes() == b.tobytes()
    verification = json.loads((tmp_path / "r.json").read_text())["verification"]
    assert verification["parity record"] == "pass"
    assert _replay(fused).returncode == 0


def test_fuse_records_its_probe_for_a_model_that_came_without_one(tmp_path):
    from tests.tiny_models import layernorm2d

    source, fused = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(layernorm2d(17), source)
    result = run_cli("fuse", str(source), "-o", str(fused))
    assert result.returncode == 0, result.stderr
    record = _record(fused)
    assert record.reference == "the input graph" and record.samples == 1
    assert _replay(fused).returncode == 0


def test_quantize_records_the_float_models_logits_with_the_error_it_measured(digits_onnx, tmp_path):
    int8 = tmp_path / "int8.onnx"
    result = run_cli("quantize", str(digits_onnx), "-o", str(int8), "--no-progress")
    assert result.returncode == 0, result.stderr
    record = _record(int8)
    assert record.reference == "the float model" and record.rtol == 0
    assert record.ratio == pytest.approx(0.5)  # RECORD_MARGIN: twice the error measured here
    precision = metadata.read(onnx.load(int8)).precision
    assert precision["scheme"] == "u8s7" and precision["weights"] == "int7"
    assert precision["measured_on"]["cpu_features"] == list(machine.cpu_features())
    assert _replay(int8).returncode == 0
