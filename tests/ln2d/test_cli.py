"""The ln2d command as a user runs it: exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli

pytestmark = pytest.mark.integration


def _assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_info_and_eval(digits_checkpoint):
    info = run_cli("info", str(digits_checkpoint), "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["architecture"]["norm"] == "layernorm2d"
    assert data["labels"] == [str(i) for i in range(10)]
    assert data["preprocessing"]["channels"] == 1 and data["preprocessing"]["height"] == 16
    assert data["parameters"] > 10_000
    result = run_cli("eval", str(digits_checkpoint))
    assert result.returncode == 0, result.stderr
    reported = float(result.stdout.split()[1])
    assert reported == pytest.approx(data["training"]["val_accuracy"], abs=1e-4)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["info", "nope.safetensors"], ["ln2d info: error:", "does not exist"]),
        (["eval", "nope.pt"], ["ln2d eval: error:", "does not exist"]),
        (["train", "--data", "no-such-dir"], ["no-such-dir does not exist"]),
        (["train", "--widths", "0"], ["widths must be positive"]),
    ],
)
def test_error_paths(args, fragments):
    _assert_one_line_error(run_cli(*args), *fragments)


def test_corrupt_checkpoint_cli(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"{not really}")
    _assert_one_line_error(run_cli("eval", str(bad)), "not a readable safetensors")


def test_usage_error_is_argparse_exit_2():
    result = run_cli("train", "--norm", "rmsnorm")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_an_install_without_the_serve_extra_keeps_the_other_commands():
    """pydantic is not importable, as in ``pip install 'ln2d[export,cpu]'``: the export
    commands still work, and ``ln2d serve`` says which extra to install, in one line."""
    blocked = "import sys; sys.modules['pydantic'] = None; from ln2d.cli import main; "
    done = [
        subprocess.run(
            [sys.executable, "-c", blocked + f"sys.exit(main({args!r}))"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        for args in (["info", "--help"], ["serve", "model.onnx"])
    ]
    assert done[0].returncode == 0 and "usage: ln2d info" in done[0].stdout, done[0].stderr
    assert done[1].returncode == 2 and "Traceback" not in done[1].stderr
    assert "invalid choice: 'serve'" in done[1].stderr
    assert "no module 'pydantic': pip install 'ln2d[serve]'" in done[1].stderr


def test_train_on_image_folder(tmp_path):
    # Two visually distinct classes of real PNG files: bright squares vs dark squares.
    rng = np.random.default_rng(0)
    for name, level in [("bright", 200), ("dark", 40)]:
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(12):
            pixels = np.clip(rng.normal(level, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    (tmp_path / "data" / "bright" / "notes.txt").write_text("ignored")
    ckpt = tmp_path / "folder.safetensors"
    result = run_cli(
        "train",
        "--data",
        str(tmp_path / "data"),
        "--size",
        "16",
        "--epochs",
        "6",
        "--widths",
        "8,16",
        "--out",
        str(ckpt),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(run_cli("info", str(ckpt), "--json").stdout)
    assert info["labels"] == ["bright", "dark"]
    assert info["preprocessing"]["channels"] == 3
    result = run_cli("eval", str(ckpt), "--data", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[1]) >= 0.9


def test_three_channel_digits_train_an_rgb_model(tmp_path):
    ckpt = tmp_path / "rgb.safetensors"
    trained = run_cli(
        "train", "--channels", "3", "--epochs", "1", "--widths", "8,16", "--out", str(ckpt),
        "--no-progress",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    info = json.loads(run_cli("info", str(ckpt), "--json").stdout)
    assert info["architecture"]["in_channels"] == 3 and info["preprocessing"]["channels"] == 3
    evaluated = run_cli("eval", str(ckpt))  # the digits validation split, as RGB
    assert evaluated.returncode == 0 and evaluated.stdout.startswith("accuracy ")


def test_cuda_training_without_a_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda trains")
    _assert_one_line_error(run_cli("train", "--device", "cuda"), "sees no CUDA GPU")


def test_bench_train_prints_its_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench-train", "--shapes", "2x8x4x4", "--dtypes", "fp32", "--networks", "",
        "--no-compile", "--seconds", "0.01", "--no-progress", "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ln2d (A/A)" in result.stdout and "timm permute" in result.stdout
    report = json.loads(out.read_text())
    (group,) = report["layer"]
    assert group["shape"] == [2, 8, 4, 4] and report["networks"] == []
    # The formula keeps three input-sized tensors for backward; ln2d's layer only the input.
    assert group["saved_vs_input"]["formula"] > 2.9 > 1.4 > group["saved_vs_input"]["ln2d"]


def test_bench_train_refuses_an_unknown_network():
    _assert_one_line_error(
        run_cli("bench-train", "--networks", "resnet"), "unknown dtype or network"
    )
