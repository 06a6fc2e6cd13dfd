"""Large JPEGs are decoded at a reduced scale (libjpeg's draft mode); the classifier must not
notice. Photos shipped with scikit-learn and large synthetic ones, through the real digits
model, draft against full decoding."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from ln2d.preprocessing import normalise, to_pixels
from tests.helpers import reference_session

pytestmark = pytest.mark.integration


def _large_jpegs() -> list[bytes]:
    """Both sample photos at 12 megapixels, and 40 crops of them at 4 to 6 times their size."""
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(load_sample_image(n)) for n in ("china.jpg", "flower.jpg")]
    images = [p.resize((4000, 3000), Image.Resampling.BICUBIC) for p in photos]
    for i in range(40):
        photo = photos[i % 2]
        left, top = int(rng.integers(0, 200)), int(rng.integers(0, 100))
        crop = photo.crop((left, top, left + 220, top + 200))
        images.append(crop.resize((int(rng.integers(880, 1320)), 1000)))
    blobs = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


def test_draft_decoding_keeps_the_predictions(digits_onnx, record_property):
    session = reference_session(digits_onnx)
    spec = json.loads(session.get_modelmeta().custom_metadata_map["ln2d.input"])
    size, mean, std = spec["height"], spec["mean"], spec["std"]

    def scores(data: bytes, draft: bool) -> np.ndarray:
        pixels = to_pixels(Image.open(io.BytesIO(data)), 1, size, size, draft=draft)
        (logits,) = session.run(None, {"input": normalise(pixels, mean, std)[None]})
        e = np.exp(logits[0].astype(np.float64) - logits[0].max())
        return e / e.sum()

    blobs = _large_jpegs()
    full = np.stack([scores(b, draft=False) for b in blobs])
    fast = np.stack([scores(b, draft=True) for b in blobs])
    agreement = float((full.argmax(1) == fast.argmax(1)).mean())
    difference = float(np.abs(full - fast).max())
    record_property("top1_agreement", agreement)
    record_property("max_score_difference", difference)
    print(f"draft vs full: top-1 agreement {agreement:.3f}, max score difference {difference:.4f}")
    assert agreement >= 0.99


def test_draft_applies_to_large_jpegs_only():
    photo = Image.fromarray(load_sample_image("china.jpg"))  # 640x427
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    image = Image.open(io.BytesIO(buffer.getvalue()))
    to_pixels(image, 3, 32, 32)
    assert image.size == (160, 107)  # 1/4 scale: still at least twice 32 on both sides
    small = Image.open(io.BytesIO(buffer.getvalue()))
    to_pixels(small, 3, 300, 300)
    assert small.size == (640, 427)  # less than 2x the model's size: decoded in full
