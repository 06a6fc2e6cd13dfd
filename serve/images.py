"""Untrusted image bytes -> the model's normalised ``(C, H, W)`` float32 input.

The same steps as ``ln2d``'s training data (EXIF orientation, convert, bilinear resize, scale,
mean/std), written again here because the server must not import ``ln2d``; a test holds the two
equal. Alpha is dropped, as in training. The pixel count is checked from the header, before any
pixel is decoded.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

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
    """uint8 ``(H, W, C)`` at the model's size."""
    image = _to_8bit(ImageOps.exif_transpose(image))
    image = image.convert("L" if info.channels == 1 else "RGB")
    if image.size != (info.width, info.height):
        image = image.resize((info.width, info.height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(info.height, info.width, info.channels)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale scaled to 8 bits (Pillow's convert would clip at 255)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        wide = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(wide, 0, 65535) / 257).astype(np.uint8), "L")
    if image.mode == "F":
        wide = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(wide, 0, 1) * 255).astype(np.uint8), "L")
    return image


def _normalise(pixels: np.ndarray, info: ModelInfo) -> np.ndarray:
    x = pixels.astype(np.float32) * np.float32(info.scale)
    x = (x - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))
