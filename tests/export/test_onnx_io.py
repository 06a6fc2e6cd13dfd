"""ONNX files of any size: written a tensor at a time, inline or with a data file, opened
without loading the weights, and bad files refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ln2d.errors import UserError
from ln2d.export import onnx_io
from tests.helpers import run_cli
from tests.tiny_models import classifier, layernorm2d


def _with_big_weight(opset: int = 18) -> onnx.ModelProto:
    """The hand-built LayerNorm2d plus an unused 64 KiB initializer and a 12-byte one."""
    model = layernorm2d(opset)
    rng = np.random.default_rng(0)
    big = rng.standard_normal((128, 128)).astype(np.float32)
    model.graph.initializer.append(numpy_helper.from_array(big, "big"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "small"))
    return model


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_inline_write_reads_back_as_the_same_model(tmp_path):
    model = _with_big_weight()
    path = tmp_path / "m.onnx"
    onnx_io.write(model, path, progress=False)
    assert onnx.load(str(path)) == model  # each initializer was appended as its own field
    assert not (tmp_path / "m.onnx.data").exists()


def test_external_write_puts_large_tensors_in_one_aligned_data_file(tmp_path):
    model = _with_big_weight()
    path = tmp_path / "m.onnx"
    onnx_io.write(model, path, external=True, progress=False)
    header = onnx.load(str(path), load_external_data=False)
    external = {
        t.name: {e.key: e.value for e in t.external_data}
        for t in header.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert "big" in external and "small" not in external  # 12 bytes stay inline
    assert {e["location"] for e in external.values()} == {"m.onnx.data"}
    assert int(external["big"]["offset"]) % onnx_io.ALIGNMENT == 0
    loaded = _arrays(onnx.load(str(path)))
    for name, array in _arrays(model).items():
        np.testing.assert_array_equal(loaded[name], array)
    assert model.graph.initializer[-2].raw_data  # the caller's model is left as it was


def test_rewriting_an_external_model_copies_its_data_file(tmp_path):
    first, second = tmp_path / "a" / "m.onnx", tmp_path / "b" / "n.onnx"
    first.parent.mkdir()
    second.parent.mkdir()
    onnx_io.write(_with_big_weight(), first, external=True, progress=False)
    header = onnx.load(str(first), load_external_data=False)
    onnx_io.write(header, second, first.parent, external=True, progress=False)
    assert (second.parent / "n.onnx.data").is_file()
    np.testing.assert_array_equal(
        _arrays(onnx.load(str(second)))["big"], _arrays(_with_big_weight())["big"]
    )


def test_opened_moves_inline_weights_to_a_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(_with_big_weight(), str(path))
    monkeypatch.setattr(onnx_io, "SPILL_BYTES", 1024)
    with onnx_io.opened(path, progress=False) as source:
        assert source.path != path and not source.external
        assert onnx_io.inline_bytes(source.proto) < 1024  # the graph only
        copy = source.folder
        np.testing.assert_array_equal(
            _arrays(onnx.load(str(source.path)))["big"], _arrays(_with_big_weight())["big"]
        )
    assert not copy.exists()


def test_opened_leaves_an_external_model_where_it_is(tmp_path):
    path = tmp_path / "m.onnx"
    onnx_io.write(_with_big_weight(), path, external=True, progress=False)
    with onnx_io.opened(path, progress=False) as source:
        assert source.path == path and source.external


def test_external_data_outside_the_models_folder_is_refused_in_one_line(tmp_path):
    outside = tmp_path / "weights"
    outside.mkdir()
    inner = tmp_path / "model"
    inner.mkdir()
    onnx_io.write(_with_big_weight(), outside / "m.onnx", external=True, progress=False)
    header = onnx.load(str(outside / "m.onnx"), load_external_data=False)
    for tensor in header.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights/m.onnx.data"
    onnx.save(header, str(inner / "m.onnx"))
    with pytest.raises(UserError, match="not a"):
        onnx_io.load_model(inner / "m.onnx")
    result = run_cli("fuse", str(inner / "m.onnx"), "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def _escaping(folder, how: str):
    """The tiny classifier with its weights in a data file it must not read: outside its
    folder (``up``), by an absolute path, or through a symlink out of it."""
    data = folder / "elsewhere"
    data.mkdir()
    onnx_io.write(classifier(), data / "m.onnx", external=True, progress=False)
    model = folder / how
    model.mkdir()
    header = onnx.load(str(data / "m.onnx"), load_external_data=False)
    location = {"up": "../elsewhere/m.onnx.data", "absolute": str(data / "m.onnx.data")}
    for tensor in header.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and how in location:
                entry.value = location[how]
    if how == "symlink":
        (model / "m.onnx.data").symlink_to(data / "m.onnx.data")
    onnx.save(header, str(model / "m.onnx"))
    return model / "m.onnx"


COMMANDS = {
    "fuse": ["fuse", "{model}", "-o", "{out}/f.onnx"],
    "quantize": ["quantize", "{model}", "-o", "{out}/q.onnx"],
    "triton-repo": ["triton-repo", "{model}", "{out}/repo"],
    "bench-fuse": ["bench-fuse", "{model}", "--no-progress"],
    "serve": ["serve", "{model}", "--port", "0"],
}


@pytest.mark.parametrize("how", ["up", "absolute", "symlink"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_data_outside_the_models_folder_in_one_line(
    tmp_path, monkeypatch, command, how
):
    monkeypatch.setattr(onnx_io, "EXTERNAL_THRESHOLD", 32)  # the tiny model's weights go out
    model = _escaping(tmp_path, how)
    out = tmp_path / "out"
    args = [a.format(model=model, out=out) for a in COMMANDS[command]]
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("how", ["up", "absolute", "symlink"])
def test_a_large_inline_model_with_escaping_data_is_refused_before_it_is_copied(
    tmp_path, monkeypatch, how
):
    # Inline weights over the spill threshold are copied to a temporary file with the model's
    # external ones: the copy reads nothing outside the model's folder either.
    monkeypatch.setattr(onnx_io, "EXTERNAL_THRESHOLD", 32)
    model = _escaping(tmp_path, how)
    header = onnx.load(str(model), load_external_data=False)
    header.graph.initializer.append(
        numpy_helper.from_array(np.zeros((64, 64), np.float32), "inline_weight")
    )
    onnx.save(header, str(model))
    monkeypatch.setattr(onnx_io, "SPILL_BYTES", 1024)
    with (
        pytest.raises(UserError, match="outside the model's folder"),
        onnx_io.opened(model, progress=False),
    ):
        pass
