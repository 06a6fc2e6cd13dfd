"""``ln2d bench`` runs for real on a tiny grid: every variant is timed, the A/A control is there,
the table and the JSON agree, and the variant each target picks is named. (Speed itself is the
benchmark's business.)"""

from __future__ import annotations

import json

import pytest

from ln2d import native
from tests.helpers import run_cli

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_bench_times_every_variant_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench", "--model", "ln2d,simple", "--batch", "2", "--channels", "8", "--spatial", "8",
        "--seconds", "0.02", "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    by_network = {p["network"]: p for p in report["results"]}
    assert set(by_network) == {"ln2d", "simple"}
    assert report["opset"] == 21  # cuda is a default provider: ln2d export --target cuda's
    ln2d, simple = by_network["ln2d"], by_network["simple"]
    assert ln2d["shape"] == [2, 8, 8, 8] and simple["shape"] == [2, 3, 8, 8]
    timed = ("decomposed", "decomposed (A/A)", "no-norm", "transpose_layernorm", "eager")
    for variant in timed:
        assert ln2d["median_ms"][variant] > 0 and simple["median_ms"][variant] > 0
    for point in (ln2d, simple):
        ms = point["median_ms"]
        assert point["aa_ratio"] == ms["decomposed"] / ms["decomposed (A/A)"]
        assert point["noisy"] == (abs(point["aa_ratio"] - 1) > 0.05)
    assert "copy" in ln2d["gb_per_s"] and "centred_conv" in simple["median_ms"]
    assert simple["targets"] == {
        "cpu": "centred_conv",
        "cuda": "transpose_layernorm",
        "portable": "transpose_layernorm",
        **({"cpu-native": "native"} if native.available() else {}),
    }
    assert ln2d["targets"]["cpu"] == "reduce_div"  # a bare norm has no Conv to fold into
    assert "### simple on cpu" in result.stdout and "### Summary" in result.stdout
    assert "| shape | A/A | decomposed |" in result.stdout
    assert "cuda: skipped, provider not available" in result.stdout or "on cuda" in result.stdout


def test_bench_times_an_int8_variant_beside_the_others_and_fp16_on_cuda_only(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench", "--model", "simple", "--batch", "2", "--spatial", "8", "--seconds", "0.02",
        "--int8", "--fp16", "--json", str(out), "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    points = {p["provider"]: p for p in json.loads(out.read_text())["results"]}
    cpu = points["cpu"]
    assert cpu["median_ms"]["int8"] > 0 and cpu["median_ms"]["decomposed (A/A)"] > 0
    # ONNX Runtime's CPU fp16 kernels are not the point
    assert not any(name.startswith("fp16:") for name in cpu["median_ms"])
    if "cuda" in points:
        cuda = points["cuda"]["median_ms"]
        assert cuda["fp16:transpose_layernorm"] > 0 and cuda["fp16:no-norm"] > 0
        assert cuda["eager"] > 0 and cuda["fp16:eager"] > 0
    (header,) = [line for line in result.stdout.splitlines() if line.startswith("| shape |")]
    assert " int8 " in header.split("|")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet"], "unknown model or provider: resnet"),
        (["--batch", "0"], "must be positive"),
    ],
)
def test_bench_bad_flags(args, message):
    result = run_cli("bench", *args, "--no-progress")
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr
