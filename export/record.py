"""The parity record a written model carries (``ln2d.parity_record``): a few inputs, the outputs
it was checked against, and the tolerance, checked on this machine before it is written.

Export records PyTorch's outputs, quantization and fp16 the float model's, fusion the input
graph's. The inputs are real images where the model takes one channel (the digits) or three
(scikit-learn's two photos, cropped), at the model's size and through its preprocessing;
random values otherwise. A record is at most SAMPLES inputs, and fewer where inputs and
outputs would pass BUDGET_BYTES: a record stays small beside the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from ln2d import machine
from ln2d.errors import CheckFailed
from ln2d.export import metadata
from ln2d.metadata import InputSpec, ModelMetadata
from ln2d.parity_record import ParityRecord, replay
from ln2d.runtime import open_session

SAMPLES = 8
BUDGET_BYTES = 4 << 20  # inputs and expected outputs together, before compression


def sample_images(spec: InputSpec, count: int = SAMPLES) -> np.ndarray:
    """``count`` preprocessed ``(N, C, H, W)`` float32 inputs for a model that takes ``spec``:
    real images for one or three channels, standard-normal values for others."""
    from PIL import Image

    from ln2d.preprocessing import normalise, to_pixels

    if spec.channels == 1:
        from sklearn.datasets import load_digits

        raw = np.rint(load_digits().images[:count] * (255 / 16)).astype(np.uint8)
        pictures = [Image.fromarray(image) for image in raw]
    elif spec.channels == 3:
        pictures = _photo_crops(count)
    else:
        shape = (count, spec.channels, spec.height, spec.width)
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    pixels = [to_pixels(p, spec.channels, spec.height, spec.width) for p in pictures]
    return normalise(np.stack(pixels), spec.mean, spec.std)


def _photo_crops(count: int) -> list:
    """Crops of the two photos scikit-learn ships, from the whole photo to a quarter of it."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    crops = []
    for i in range(count):
        photo = photos[i % 2]
        width, height = photo.size
        fraction = 1 - 0.75 * (i // 2) / max(1, (count - 1) // 2)
        box = (0, 0, int(width * fraction), int(height * fraction))
        crops.append(photo.crop(box))
    return crops


def within_budget(inputs: np.ndarray, expected: Sequence[np.ndarray]) -> int:
    """How many of the samples fit BUDGET_BYTES (at least one)."""
    per_sample = (inputs.nbytes + sum(e.nbytes for e in expected)) / max(1, len(inputs))
    return max(1, min(len(inputs), int(BUDGET_BYTES // per_sample)))


def checked(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    expected: Sequence[np.ndarray],
    reference: str,
    atol: float,
    rtol: float,
) -> ParityRecord:
    """The record of ``model`` on ``inputs`` against ``expected``, once ONNX Runtime on this
    machine's CPU has run it within the tolerance; CheckFailed (nothing written) otherwise."""
    here = machine.describe()
    record = ParityRecord(dict(inputs), tuple(expected), atol, rtol, reference, here, 0.0)
    session = open_session(model)
    result = replay(record, lambda feeds: session.run(None, dict(feeds)))
    if not result.passed:
        raise CheckFailed(
            f"the model does not compute {reference}'s outputs on this machine: {result.summary()}"
        )
    return dataclasses.replace(record, ratio=result.ratio)


def attach(model: onnx.ModelProto, record: ParityRecord) -> None:
    metadata.write(model, ModelMetadata(parity_record=record))
