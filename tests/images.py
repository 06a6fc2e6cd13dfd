"""Real image bytes for the server tests: the digits in every format and mode we accept, and
crafted hostile files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from ln2d.data import load_digits


def digit(index: int = 0) -> tuple[np.ndarray, str]:
    """A 16x16 uint8 digit (the model's own input size) and its label."""
    data = load_digits()
    return data.images[index, :, :, 0], data.labels[data.targets[index]]


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    return encode(Image.fromarray(pixels), "PNG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` in a valid IHDR but holds a few bytes of pixel
    data: a decompression bomb's header."""
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        [
            _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
            _chunk(b"IDAT", zlib.compress(b"\x00" * 64)),
            _chunk(b"IEND", b""),
        ]
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
