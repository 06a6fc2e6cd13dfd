"""The parity record a model carries (``ln2d.parity_record``): its encoding through the metadata
schema, the error rule, and a replay through a real ONNX Runtime session of a hand-built
classifier whose expected logits are computed in numpy."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ln2d import machine
from ln2d.export import metadata
from ln2d.metadata import MetadataError, ModelMetadata
from ln2d.parity_record import ParityRecord, error_ratio, replay
from tests.tiny_models import ELSEWHERE, classifier, with_record


def _record(**arrays: np.ndarray) -> ParityRecord:
    return ParityRecord(arrays, tuple(arrays.values()), 1e-3, 0.0, "numpy", ELSEWHERE, None)


def test_arrays_come_back_bit_for_bit_through_the_metadata():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    values[0, 0, 0, :3] = [np.nan, np.inf, -0.0]
    arrays = {
        "x": values,
        "half": values.astype(np.float16),
        "pixels": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
        "ids": np.arange(-3, 3, dtype=np.int64),
    }
    props = ModelMetadata(parity_record=_record(**arrays)).to_props()
    back = ModelMetadata.from_props(props).parity_record
    for name, array in arrays.items():
        got = back.inputs[name]
        assert got.dtype == array.dtype and got.shape == array.shape
        assert got.tobytes() == array.tobytes()
    assert back.recorded_on == ELSEWHERE and back.ratio is None


def test_a_damaged_record_is_a_metadata_error():
    props = ModelMetadata(parity_record=_record(x=np.zeros(3, np.float32))).to_props()
    props["ln2d.parity_record"] = props["ln2d.parity_record"].replace('"data": "', '"data": "!')
    with pytest.raises(MetadataError, match="parity_record"):
        ModelMetadata.from_props(props)


def test_the_error_is_the_worst_value_as_a_fraction_of_its_tolerance():
    expected = np.array([1.0, -100.0, 0.0], np.float32)
    # atol 0.1, rtol 0.01: allowed 0.11, 1.1 and 0.1 for these three.
    actual = expected + np.array([0.055, 1.1, 0.0], np.float32)
    assert error_ratio(actual, expected, 0.1, 0.01) == pytest.approx(1.0, rel=1e-5)
    actual[2] = 0.3
    assert error_ratio(actual, expected, 0.1, 0.01) == pytest.approx(3.0, rel=1e-5)


def test_non_finite_values_must_be_where_the_record_has_them():
    expected = np.array([np.nan, np.inf, 1.0])
    assert error_ratio(expected.copy(), expected, 1e-4, 0) == 0
    assert error_ratio(np.array([0.0, np.inf, 1.0]), expected, 1e-4, 0) == np.inf
    assert error_ratio(np.array([np.nan, np.inf, np.nan]), expected, 1e-4, 0) == np.inf
    assert error_ratio(np.ones(2), np.ones(3), 1e-4, 0) == np.inf


def _run(model):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, dict(feeds))


def test_a_record_that_holds_replays_within_its_tolerance():
    model = with_record(classifier())
    result = replay(metadata.read(model).parity_record, _run(model))
    assert result.passed and result.ratio < 0.1 and result.max_abs < 1e-5
    assert result.machine == machine.describe()


def test_a_drift_is_measured_and_described():
    model = with_record(classifier(), shift=0.01)
    result = replay(metadata.read(model).parity_record, _run(model))
    assert not result.passed
    # 0.01 off outputs of about 1 against atol 1e-4 + rtol 1e-4: roughly 50x the tolerance.
    assert 20 < result.ratio < 100 and result.max_abs == pytest.approx(0.01, rel=1e-3)
    line = result.summary()
    assert "max abs error 0.01" in line and "numpy's outputs" in line and "4 inputs" in line
    assert "\n" not in line
    assert result.to_json()["passed"] is False and result.to_json()["samples"] == 4


def test_a_model_with_other_outputs_than_its_record_fails():
    model = with_record(classifier())
    record = metadata.read(model).parity_record
    assert not replay(record, lambda feeds: []).passed
    assert not replay(record, lambda feeds: [np.zeros((4, 3), np.float32)]).passed
