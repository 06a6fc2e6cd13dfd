"""``ln2d triton-repo``: a repository Triton loads unchanged. The config parses with Triton's own
``ModelConfig`` protobuf (shipped in tritonclient), its dims match the ONNX model, the labels
match the metadata, and the copied model computes the same logits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ln2d import pbtxt
from tests.helpers import run_cli

pytestmark = pytest.mark.integration


def parse_config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.fixture(scope="module")
def repository(digits_onnx, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton")
    result = run_cli("triton-repo", str(digits_onnx), str(repo))
    assert result.returncode == 0, result.stderr
    return repo


def test_layout_and_config_match_the_model(repository, digits_onnx):
    name = metadata(digits_onnx)["ln2d.name"]
    folder = repository / name
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1",
        "1/model.onnx",
        "config.pbtxt",
        "labels.txt",
    ]
    config = parse_config(folder / "config.pbtxt")
    assert config.name == name and config.platform == "onnxruntime_onnx"

    session = ort.InferenceSession(str(digits_onnx), providers=["CPUExecutionProvider"])
    (model_input,), (model_output,) = session.get_inputs(), session.get_outputs()
    size = json.loads(metadata(digits_onnx)["ln2d.input"])
    batch, *sample = model_input.shape
    assert isinstance(batch, str) and config.max_batch_size == 32
    (config_input,), (config_output,) = config.input, config.output
    assert config_input.name == model_input.name
    assert config_input.data_type == model_config_pb2.TYPE_FP32
    # Static dims are copied; symbolic H, W are fixed to the size the model was trained at.
    trained = [size["channels"], size["height"], size["width"]]
    expected = [d if isinstance(d, int) else t for d, t in zip(sample, trained, strict=True)]
    assert list(config_input.dims) == expected
    assert config_output.name == model_output.name
    assert list(config_output.dims) == model_output.shape[1:]
    assert config_output.label_filename == "labels.txt"

    queue = config.dynamic_batching.default_queue_policy
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert queue.max_queue_size == 64
    assert queue.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT


def test_labels_and_model_are_the_exported_ones(repository, digits_onnx):
    folder = repository / metadata(digits_onnx)["ln2d.name"]
    labels = (folder / "labels.txt").read_text().splitlines()
    assert labels == json.loads(metadata(digits_onnx)["ln2d.labels"])
    batch = np.random.default_rng(0).standard_normal((3, 1, 16, 16), dtype=np.float32)
    logits = [
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": batch}
        )[0]
        for path in (digits_onnx, folder / "1" / "model.onnx")
    ]
    np.testing.assert_array_equal(*logits)


def test_flags_reach_the_config(digits_onnx, tmp_path):
    result = run_cli(
        "triton-repo", str(digits_onnx), str(tmp_path), "--name", "digits", "--max-batch", "8",
        "--max-delay-ms", "0.5", "--max-queue", "16", "--timeout-s", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = parse_config(tmp_path / "digits" / "config.pbtxt")
    assert config.max_batch_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    queue = config.dynamic_batching.default_queue_policy
    assert (queue.max_queue_size, queue.default_timeout_microseconds) == (16, 2_000_000)


def test_a_model_without_metadata_gets_its_file_name_and_index_labels(digits_onnx, tmp_path):
    model = onnx.load(str(digits_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare-model.onnx"
    onnx.save(model, str(bare))
    result = run_cli("triton-repo", str(bare), str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "repo" / "bare-model"
    assert (folder / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    # Without the trained size, symbolic H and W stay variable (-1).
    assert list(parse_config(folder / "config.pbtxt").input[0].dims) == [1, -1, -1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "two words"], "model name 'two words'"),
        (["--max-batch", "0"], "--max-batch and --max-queue must be >= 1"),
    ],
)
def test_bad_flags_exit_2_with_one_line(digits_onnx, tmp_path, args, message):
    result = run_cli("triton-repo", str(digits_onnx), str(tmp_path), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())


def test_not_a_model_exits_2(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all")
    result = run_cli("triton-repo", str(junk), str(tmp_path / "repo"))
    assert result.returncode == 2 and "not a readable ONNX model" in result.stderr


def test_strings_are_quoted_and_enums_bare():
    config = {"name": 'a "b"', "instance_group": [{"kind": "KIND_CPU", "count": 2}]}
    parsed = text_format.Parse(pbtxt.render(config), model_config_pb2.ModelConfig())
    assert parsed.name == 'a "b"'
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_a_second_version_is_written_beside_the_first(digits_onnx, tmp_path):
    name = metadata(digits_onnx)["ln2d.name"]
    for version in ("1", "2"):
        result = run_cli("triton-repo", str(digits_onnx), str(tmp_path), "--version", version)
        assert result.returncode == 0, result.stderr
    folder = tmp_path / name
    assert (folder / "1" / "model.onnx").is_file() and (folder / "2" / "model.onnx").is_file()
    assert parse_config(folder / "config.pbtxt").name == name
