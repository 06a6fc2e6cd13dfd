"""A model's own proof, carried in the model: a few inputs, the outputs the check that passed it
compared against, and the tolerance that check held it to (``ln2d.parity_record``).

Whatever writes a model writes its record after checking it on the machine that made it:
``ln2d export`` against PyTorch, ``ln2d fuse`` against the input graph, ``ln2d quantize`` and
fp16 export against the float model. Wherever the model runs, ``replay`` runs the inputs again
on that machine's provider and CPU and measures the same error: ``ln2d serve`` does it at every
load, before the model takes traffic, and ``ln2d parity MODEL.onnx`` on demand. A kernel that
computes differently there (an int8 kernel that saturates on a CPU without VNNI, a provider
with TF32 on) shows up as a drift, with the numbers.

The record is JSON, its arrays raw little-endian bytes compressed and base64-encoded: eight
32x32 digits and their logits take a few kB. Torch-free and onnx-free: the server replays it
through the session it serves with.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ln2d import machine

# One model run on the record's inputs: its outputs, in the model's output order.
Run = Callable[[Mapping[str, np.ndarray]], Sequence[np.ndarray]]


class RecordError(ValueError):
    """A record that cannot be read."""


@dataclass(frozen=True)
class ParityRecord:
    """Inputs by name, the expected outputs in order, and the tolerance: an output value ``a``
    whose expected value is ``e`` passes when ``|a - e| <= atol + rtol * |e|``."""

    inputs: dict[str, np.ndarray]
    expected: tuple[np.ndarray, ...]
    atol: float
    rtol: float
    reference: str  # what the expected outputs came from: "PyTorch", "the float model", ...
    recorded_on: dict  # machine.describe() where the model passed
    # The error there, as a fraction of the tolerance (<= 1); None where the writer's gate
    # checked the model on these inputs but kept no number (ln2d fuse writes before its gate).
    ratio: float | None

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def tolerance(self) -> str:
        return f"atol {self.atol:.3g}" + (f" + rtol {self.rtol:.3g}" if self.rtol else "")

    def to_json(self) -> dict:
        return {
            "inputs": {name: _encode(a) for name, a in self.inputs.items()},
            "expected": [_encode(a) for a in self.expected],
            "atol": self.atol,
            "rtol": self.rtol,
            "reference": self.reference,
            "recorded_on": self.recorded_on,
            "ratio": self.ratio,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> ParityRecord:
        try:
            return cls(
                inputs={str(n): _decode(a) for n, a in data["inputs"].items()},
                expected=tuple(_decode(a) for a in data["expected"]),
                atol=float(data["atol"]),
                rtol=float(data["rtol"]),
                reference=str(data["reference"]),
                recorded_on=dict(data["recorded_on"]),
                ratio=None if data["ratio"] is None else float(data["ratio"]),
            )
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise RecordError(f"unreadable parity record: {exc}") from exc


def _encode(array: np.ndarray) -> dict:
    data = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    return {
        "dtype": array.dtype.str.lstrip("<>|="),
        "shape": list(array.shape),
        "data": base64.b64encode(zlib.compress(data, 9)).decode("ascii"),
    }


def _decode(data: Mapping) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(data["data"], validate=True))
    dtype = np.dtype(str(data["dtype"])).newbyteorder("<")
    return np.frombuffer(raw, dtype).reshape([int(d) for d in data["shape"]]).copy()


def error_ratio(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> float:
    """The largest ``|actual - expected| / (atol + rtol * |expected|)`` (<= 1 is within the
    tolerance); infinite where the two disagree on which values are NaN or infinite."""
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    finite = np.isfinite(expected)
    if not np.array_equal(actual[~finite], expected[~finite], equal_nan=True):
        return float("inf")
    if not np.isfinite(actual[finite]).all():
        return float("inf")
    diff = np.abs(actual[finite] - expected[finite])
    allowed = atol + rtol * np.abs(expected[finite])
    if diff.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(diff == 0, 0.0, diff / allowed)
    return float(ratios.max())


def max_abs(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest absolute difference where both are finite (infinite for another shape)."""
    if actual.shape != expected.shape:
        return float("inf")
    both = np.isfinite(actual) & np.isfinite(expected)
    diff = np.abs(actual[both].astype(np.float64) - expected[both].astype(np.float64))
    return float(diff.max(initial=0.0))


@dataclass(frozen=True)
class Replay:
    """A record replayed on this machine: the error it measured, against the tolerance."""

    record: ParityRecord
    ratio: float
    max_abs: float
    machine: dict  # machine.describe() here

    @property
    def passed(self) -> bool:
        return self.ratio <= 1.0

    def summary(self) -> str:
        """The measured error against the tolerance, and this machine against the record's."""
        record = self.record
        moved = machine.difference(record.recorded_on, self.machine)
        there = "within it" if record.ratio is None else f"{record.ratio:.2f}x"
        return (
            f"max abs error {self.max_abs:.3g} against {record.reference}'s outputs, "
            f"{self.ratio:.2f}x the tolerance ({record.tolerance}; {there} where it was "
            f"recorded), {record.samples} inputs; here: "
            f"{' '.join(self.machine['cpu_features']) or 'no listed CPU features'}, "
            f"{self.machine['provider']}, onnxruntime {self.machine['onnxruntime']}"
            + (f" ({moved} since it was recorded)" if moved else "")
        )

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "ratio": self.ratio,
            "max_abs": self.max_abs,
            "tolerance": {"atol": self.record.atol, "rtol": self.record.rtol},
            "reference": self.record.reference,
            "samples": self.record.samples,
            "recorded_on": self.record.recorded_on,
            "replayed_on": self.machine,
        }


def replay(record: ParityRecord, run: Run, provider: str = "cpu") -> Replay:
    """Run the record's inputs through ``run`` here and measure them against its outputs."""
    outputs = [np.asarray(o) for o in run(record.inputs)]
    if len(outputs) != len(record.expected):
        return Replay(record, float("inf"), float("inf"), machine.describe(provider))
    pairs = list(zip(outputs, record.expected, strict=True))
    ratio = max(error_ratio(a, e, record.atol, record.rtol) for a, e in pairs)
    worst = max(max_abs(a, e) for a, e in pairs)
    return Replay(record, ratio, worst, machine.describe(provider))
