"""How a comparison is judged: elementwise within the dtype's tolerances, or, for reduced
precision, by the answers (accuracy drop, top-1 agreement). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ln2d.export.numerics import close, tolerance
from ln2d.export.parity.report import Comparison, ParityOptions

# A reduced-precision model is not elementwise close to fp32 by design: it is held to the
# answers instead (accuracy drop in points, top-1 agreement), with these defaults.
REDUCED_GATES = {"int8": (0.5, 0.99)}


@dataclass(frozen=True)
class Gates:
    """What a comparison must reach: elementwise closeness, or (reduced precision, or when
    asked) answers: accuracy within ``max_drop`` points and ``min_agreement`` top-1."""

    atol: float
    rtol: float
    elementwise: bool
    max_drop: float | None
    min_agreement: float | None


def gates(options: ParityOptions, dtype, precision: str) -> Gates:
    # An fp16 model keeps fp32 inputs and outputs, but its numbers are fp16's.
    atol, rtol = tolerance(np.float16 if precision == "fp16" else dtype)
    # 0 is a tolerance (exact), not a request for the default.
    atol = atol if options.atol is None else options.atol
    rtol = rtol if options.rtol is None else options.rtol
    max_drop, min_agreement = REDUCED_GATES.get(precision, (None, None))
    return Gates(
        atol,
        rtol,
        elementwise=precision not in REDUCED_GATES,
        max_drop=max_drop if options.max_accuracy_drop is None else options.max_accuracy_drop,
        min_agreement=min_agreement if options.min_agreement is None else options.min_agreement,
    )


def compare(name, provider, actual, expected, gates: Gates, labels=None) -> Comparison:
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    scale = np.maximum(np.abs(expected), np.finfo(np.float32).tiny)
    a, e = actual.reshape(-1).astype(np.float64), expected.reshape(-1).astype(np.float64)
    cosine = float(a @ e / max(np.linalg.norm(a) * np.linalg.norm(e), 1e-30))
    agreement = _agreement(actual, expected)
    accuracy = _accuracy(actual, labels)
    drop = None if accuracy is None else 100 * (_accuracy(expected, labels) - accuracy)
    passed = (
        (not gates.elementwise or close(actual, expected, gates.atol, gates.rtol))
        and (gates.min_agreement is None or (agreement or 0.0) >= gates.min_agreement)
        and (gates.max_drop is None or drop is None or drop <= gates.max_drop)
    )
    return Comparison(
        name,
        provider,
        "pass" if passed else "FAIL",
        max_abs=float(diff.max()),
        max_rel=float((diff / scale).max()),
        mean_abs=float(diff.mean()),
        p99_abs=float(np.percentile(diff, 99)),
        cosine=cosine,
        top1_agreement=agreement,
        accuracy=accuracy,
    )


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or outputs.ndim != 2:
        return None
    return float((outputs.argmax(1) == labels).mean())


def _agreement(actual: np.ndarray, expected: np.ndarray) -> float | None:
    """Top-1 agreement of (N, classes) outputs; None for other shapes (images, features)."""
    if actual.ndim != 2:
        return None
    return float((actual.argmax(1) == expected.argmax(1)).mean())
