"""A model whose parity record does not hold where it is served: a real ``ln2d serve`` process
refuses readiness with one line of numbers, and serves it with ``--accept-drift``.

Two kinds of drift. A record whose outputs were moved (any machine). And the real one: an
int8 model with 8-bit weights (``--scheme u8s8``) recorded on a CPU with VNNI, served on one
without, where ONNX Runtime's AVX2 kernels saturate; ``make test-older-cpu`` runs that one
under qemu's Haswell with the model made on the machine that runs the lane."""

from __future__ import annotations

import json
import time

import httpx
import onnx
import pytest

from ln2d import machine
from ln2d.export import metadata
from ln2d.serve.tools.launcher import ServerProcess
from tests.helpers import run_cli, with_moved_record
from tests.serve.prometheus import sample

pytestmark = pytest.mark.integration


def _settled_readiness(server: ServerProcess) -> httpx.Response:
    """/v2/health/ready once the model has loaded or failed to (not while it is loading)."""
    deadline = time.monotonic() + 120
    while True:
        answer = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
        if "loading" not in answer.json().get("error", ""):
            return answer
        assert time.monotonic() < deadline, "the model never finished loading"
        time.sleep(0.1)


def _refused_then_accepted(model) -> None:
    with ServerProcess(model, wait_ready=False) as server:
        ready = _settled_readiness(server)
        assert ready.status_code == 400
        assert "parity record does not hold on this machine" in ready.json()["error"]
        lines = [line for line in server.logs if "parity record does not hold" in line]
        assert len(lines) == 1
        message = json.loads(lines[0])["message"]
        assert "ln2d-layernorm2d" in message and "max abs error" in message
        assert "the tolerance" in message and "--accept-drift" in message
        ratio = sample(httpx.get(f"{server.url}/metrics").text, "ln2d_parity_record_ratio")
        assert ratio > 1
    with ServerProcess(model, ["--accept-drift"]) as server:
        meta = httpx.get(f"{server.url}/v2/models/ln2d-layernorm2d").json()
        assert meta["parameters"]["parity_record"]["passed"] is False
        assert any("drift accepted" in line for line in server.logs)


def test_a_record_whose_outputs_moved_is_refused_and_accepted_on_request(digits_onnx, tmp_path):
    _refused_then_accepted(with_moved_record(digits_onnx, tmp_path / "drifted.onnx"))


@pytest.mark.cpu_numerics
def test_an_int8_model_recorded_with_vnni_drifts_on_a_cpu_without(u8s8_onnx):
    recorded = metadata.read(onnx.load(u8s8_onnx)).parity_record.recorded_on["cpu_features"]
    if "AVX512VNNI" not in recorded or "AVX512VNNI" in machine.cpu_features():
        pytest.skip("needs a u8s8 model recorded with VNNI, served without (make test-older-cpu)")
    parity = run_cli("parity", str(u8s8_onnx), "--providers", "cpu")
    assert parity.returncode == 1 and "| cpu | FAIL |" in parity.stdout
    assert "-AVX512VNNI" in parity.stdout
    _refused_then_accepted(u8s8_onnx)
