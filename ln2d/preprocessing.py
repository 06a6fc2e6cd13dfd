"""An image -> the model's input: the one definition that training and the server both run.

    (JPEG: reduced-scale decode) -> EXIF orientation -> 8 bits -> L or RGB -> bilinear resize
    -> * scale -> (x - mean) / std

Torch-free (Pillow and numpy), so a serving install has it. Alpha is dropped; 16- and 32-bit
grayscale are scaled to 8 bits, not clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

SCALE = 1 / 255  # uint8 -> [0, 1]; recorded in the ONNX metadata as "scale"


def to_pixels(
    image: Image.Image, channels: int, height: int, width: int, draft: bool = True
) -> np.ndarray:
    """A Pillow image in any mode -> uint8 ``(height, width, channels)`` at the model's size.

    A JPEG at least twice the model's size on both sides is decoded at a reduced scale (the
    DCT's 1/2, 1/4 or 1/8, libjpeg's "draft" mode) that still leaves it at least twice that
    size: a 12-megapixel photo for a 224x224 model decodes at 1/8 in a fraction of the time.
    ``draft=False`` decodes in full (the reference the tests hold draft decoding to)."""
    if draft and image.format == "JPEG":
        # Square, so that an EXIF rotation applied afterwards cannot shrink it below 2x.
        side = 2 * max(height, width)
        image.draft(image.mode, (side, side))
    image = _to_8bit(ImageOps.exif_transpose(image))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(height, width, channels)


def normalise(
    pixels: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = SCALE
) -> np.ndarray:
    """uint8 ``(..., H, W, C)`` -> float32 ``(..., C, H, W)``, scaled and standardised."""
    x = pixels.astype(np.float32)
    # In place: one float buffer besides the result, whatever the batch.
    x *= np.float32(scale)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale scaled to 8 bits (Pillow's convert would clip at 255)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(wide, 0, 65535) / 257).astype(np.uint8), "L")
    if image.mode == "F":
        wide = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(wide, 0, 1) * 255).astype(np.uint8), "L")
    return image
