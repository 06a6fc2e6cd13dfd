"""Training and the server turn the same image file into the same model input, bit for bit,
whatever the file's mode: both run ln2d.preprocessing, and this holds them to it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ln2d.data import Preprocessing, load_image_folder
from ln2d.serve.images import decode
from ln2d.serve.model import ModelInfo

SIZE = 12
GRADIENT = np.add.outer(np.arange(20), np.arange(28)).astype(np.float64) / 46


def _image(mode: str) -> tuple[Image.Image, str]:
    """A 28x20 test image in ``mode`` and a format that stores that mode."""
    gray = Image.fromarray(np.rint(GRADIENT * 255).astype(np.uint8), "L")
    rgb = Image.merge("RGB", [gray, gray.rotate(180), gray.transpose(Image.FLIP_LEFT_RIGHT)])
    images = {
        "L": (gray, "PNG"),
        "RGB": (rgb, "PNG"),
        "I;16": (Image.fromarray(np.rint(GRADIENT * 65535).astype(np.uint16)), "PNG"),
        "P": (rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "RGBA": (rgb.convert("RGBA"), "PNG"),
        "CMYK": (rgb.convert("CMYK"), "TIFF"),
    }
    return images[mode]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("mode", ["L", "RGB", "I;16", "P", "RGBA", "CMYK"])
def test_training_and_serving_preprocess_alike(mode, channels, tmp_path):
    image, fmt = _image(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    data = buffer.getvalue()
    assert Image.open(io.BytesIO(data)).mode == image.mode  # the file really is in that mode
    (tmp_path / "class").mkdir()
    (tmp_path / "class" / f"image.{fmt.lower()}").write_bytes(data)

    mean, std = (0.25,) * channels, (0.5,) * channels
    training = load_image_folder(tmp_path, channels, SIZE, SIZE).images
    trained = Preprocessing(channels, SIZE, SIZE, mean, std)(training)[0]
    info = ModelInfo("m", ("a",), "input", "logits", channels, SIZE, SIZE, mean, std, 1 / 255)
    served = decode(data, info, max_pixels=10_000)
    np.testing.assert_array_equal(served, trained)
    assert served.shape == (channels, SIZE, SIZE) and served.dtype == np.float32


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    image, fmt = _image("I;16")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "wide.png").write_bytes(buffer.getvalue())
    pixels = load_image_folder(tmp_path, 1, 20, 28).images[0, :, :, 0]
    # The brightest pixel is 65535 -> 255, the darkest 0 -> 0, and the ramp in between survives.
    assert pixels.max() == 255 and pixels.min() == 0 and len(np.unique(pixels)) > 40
