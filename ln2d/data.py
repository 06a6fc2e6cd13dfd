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


def fit_preprocessing(images: np.ndarray, chunk: int = 1024) -> Preprocessing:
    """Per-channel mean and std of uint8 ``(N, H, W, C)`` images already at the model's size,
    summed ``chunk`` images at a time: never a float copy of the whole set."""
    count, height, width, channels = images.shape
    total = np.zeros(channels)
    squares = np.zeros(channels)
    for start in range(0, count, chunk):
        x = images[start : start + chunk].reshape(-1, channels).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        squares += np.square(x).sum(axis=0)
    pixels = count * height * width
    mean = total / pixels
    std = np.maximum(np.sqrt(np.maximum(squares / pixels - mean**2, 0.0)), 1e-3)
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
    files = [
        (path, index)
        for index, name in enumerate(classes)
        for path in sorted((root / name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise UserError(f"{root} contains no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    # One uint8 array filled in place: no list of images stacked into a second copy.
    images = np.empty((len(files), height, width, channels), np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                images[i] = to_pixels(image, channels, height, width)
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot read image {path}: {exc}") from exc
    targets = np.asarray([index for _, index in files], np.int64)
    return Dataset(images, targets, tuple(classes))


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


def evaluation_data(checkpoint, data: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed (x, y) for a checkpoint: the digits validation split of its training run, or
    every image of the folder ``data``, whose classes must be the checkpoint's."""
    pre = checkpoint.preprocessing
    if data is None:
        dataset = load_digits(pre.height, pre.channels)
        config = checkpoint.training.get("config", {})
        _, dataset = split(dataset, config.get("val_fraction", 0.2), config.get("seed", 0))
    else:
        dataset = load_image_folder(data, pre.channels, pre.height, pre.width)
        if dataset.labels != checkpoint.labels:
            raise UserError(
                f"{data} has classes {list(dataset.labels)} but the model has "
                f"{list(checkpoint.labels)}"
            )
    return pre(dataset.images), dataset.targets
