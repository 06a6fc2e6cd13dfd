"""Datasets as uint8 images plus the preprocessing that turns them into model input.

Every image, whether from scikit-learn's digits or from a folder of files, goes through
``ln2d.preprocessing``: the same code the server runs on request bytes, with the size, mean and
std the ONNX metadata records, so training and serving agree.

The digits (8x8, values 0..16, white ink on black) become ``v * 255 / 16`` grayscale images,
one channel, upsampled to 16x16: the default three stages pool 16 -> 8 -> 4 -> 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ln2d.errors import UserError
from ln2d.preprocessing import normalise, to_pixels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DIGITS_SIZE = 16


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # uint8, (N, H, W, C); H and W may vary only before resizing
    targets: np.ndarray  # int64, (N,)
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(self.images[index], self.targets[index], self.labels)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input; stored in checkpoints and ONNX metadata."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            int(data["channels"]),
            int(data["height"]),
            int(data["width"]),
            tuple(float(v) for v in data["mean"]),
            tuple(float(v) for v in data["std"]),
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, C)`` images at the model's size -> float32 ``(N, C, H, W)``."""
        return normalise(images, self.mean, self.std)


def fit_preprocessing(images: np.ndarray) -> Preprocessing:
    """Per-channel mean and std of uint8 ``(N, H, W, C)`` images already at the model's size."""
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = np.maximum(x.std(axis=(0, 1, 2)), 1e-3)
    _, height, width, channels = images.shape
    return Preprocessing(channels, height, width, tuple(mean.tolist()), tuple(std.tolist()))


def load_digits(size: int = DIGITS_SIZE, channels: int = 1) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), as ``size`` x ``size``,
    gray or (``channels=3``) gray replicated to RGB."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    raw = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([to_pixels(Image.fromarray(img), channels, size, size) for img in raw])
    return Dataset(images, bunch.target.astype(np.int64), tuple(str(t) for t in range(10)))


def load_image_folder(root: Path, channels: int, height: int, width: int) -> Dataset:
    """An ImageFolder-style tree: one sub-folder per class, images inside, read with Pillow."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class sub-folders (expected ROOT/<class>/<image>)")
    images, targets = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as image:
                    images.append(to_pixels(image, channels, height, width))
            except (UnidentifiedImageError, OSError) as exc:
                raise UserError(f"cannot read image {path}: {exc}") from exc
            targets.append(index)
    if not images:
        raise UserError(f"{root} contains no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    return Dataset(np.stack(images), np.asarray(targets, np.int64), tuple(classes))


def split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A stratified, seeded train / validation split."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(dataset))
    counts = np.bincount(dataset.targets)
    stratify = dataset.targets if counts[counts > 0].min() >= 2 else None
    train, val = train_test_split(
        index, test_size=val_fraction, random_state=seed, stratify=stratify
    )
    return dataset.subset(np.sort(train)), dataset.subset(np.sort(val))
