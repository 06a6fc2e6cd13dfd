"""The one metadata schema: what export writes is what the server, parity, the tuner and
triton-repo read; malformed entries are refused with the key's name."""

from __future__ import annotations

import json

import onnx
import pytest

from ln2d.metadata import InputSpec, MetadataError, ModelMetadata

SPEC = InputSpec(3, 32, 24, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))


def test_props_round_trip_every_field():
    meta = ModelMetadata(
        name="m", labels=("a", "b"), input=SPEC, architecture={"class": "x.Y"}, eps="1e-06",
        version="0.1.0", checkpoint_sha256="ab", fusion={"fused": True, "sites": []},
        precision={"precision": "int8", "per_channel": False}, requires="ln2d.native",
    )  # fmt: skip
    props = meta.to_props()
    assert all(key.startswith("ln2d.") for key in props)
    assert json.loads(props["ln2d.input"])["color"] == "RGB"
    assert ModelMetadata.from_props({**props, "other": "ignored"}) == meta


def test_a_model_without_entries_is_fp32_with_nothing_set():
    meta = ModelMetadata.from_props({})
    assert meta == ModelMetadata() and meta.precision_name == "fp32"


@pytest.mark.parametrize(
    ("key", "text"),
    [("ln2d.labels", "{}"), ("ln2d.input", '{"channels": 1}'), ("ln2d.precision", "{}"),
     ("ln2d.fusion", "not json"), ("ln2d.input", json.dumps({**SPEC.to_json(), "std": [0, 1, 1]}))],
)  # fmt: skip
def test_a_malformed_entry_is_refused_by_name(key, text):
    with pytest.raises(MetadataError, match=key.replace(".", r"\.")):
        ModelMetadata.from_props({key: text})


@pytest.mark.integration  # a trained and exported model
def test_what_export_writes_is_what_every_reader_reads(digits_onnx):
    from ln2d.export import metadata
    from ln2d.export.fusion.tune import default_shape
    from ln2d.export.triton_repo import _trained_size
    from ln2d.serve.model import Model

    written = {p.key: p.value for p in onnx.load(str(digits_onnx)).metadata_props}
    meta = metadata.read(onnx.load(str(digits_onnx)))
    assert meta.to_props() == {k: v for k, v in written.items() if k.startswith("ln2d.")}
    served = Model(digits_onnx, "cpu", False, 1).info
    spec = meta.input
    assert (served.name, served.labels, served.precision) == (meta.name, meta.labels, "fp32")
    assert (served.channels, served.height, served.width) == (
        spec.channels,
        spec.height,
        spec.width,
    )
    assert (served.mean, served.std, served.scale) == (spec.mean, spec.std, spec.scale)
    model = onnx.load(str(digits_onnx))
    assert _trained_size(model) == {0: spec.channels, 1: spec.height, 2: spec.width}
    assert default_shape(model) == (1, spec.channels, spec.height, spec.width)
