"""Untrusted image bytes -> the model's normalised ``(C, H, W)`` float32 input.

Decoding is the server's own (formats, limits, errors); the pixels then go through
``ln2d.preprocessing``, the steps training uses. The pixel count is checked from the header,
before any pixel is decoded.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ln2d.preprocessing import normalise, to_pixels
from ln2d.serve.errors import ApiError
from ln2d.serve.model import ModelInfo

# Pillow format name -> the media type a client declares for it.
FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# The body's type may also be left for the server to detect.
MEDIA_TYPES = frozenset(FORMATS.values()) | {"application/octet-stream"}


def check_media_type(content_type: str | None) -> None:
    """415 unless the declared type is one we decode (parameters such as charset ignored)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in MEDIA_TYPES:
        raise ApiError(
            415,
            f"unsupported media type {media_type or '(none)'!r}; send one of "
            f"{', '.join(sorted(FORMATS.values()))}",
        )


def decode(data: bytes, info: ModelInfo, max_pixels: int) -> np.ndarray:
    """Decode, orient, convert, resize and normalise one image; ApiError on bad input."""
    image = _open(data, max_pixels)
    try:
        pixels = _pixels(image, info)
    except Exception as exc:  # Pillow signals corrupt data with many exception types
        raise ApiError(400, f"malformed {image.format} image: {exc}") from None
    return _normalise(pixels, info)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ApiError(400, "empty image")
    try:
        image = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"image too large: {exc}") from None
    except Exception:
        raise ApiError(400, f"not a decodable image (expected {', '.join(FORMATS)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(
            413, f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return image


def _pixels(image: Image.Image, info: ModelInfo) -> np.ndarray:
    return to_pixels(image, info.channels, info.height, info.width)


def _normalise(pixels: np.ndarray, info: ModelInfo) -> np.ndarray:
    return normalise(pixels, info.mean, info.std, info.scale)
