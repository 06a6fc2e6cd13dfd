"""The inputs a parity check or a calibration runs on: a checkpoint's own validation data, or
inputs shaped and normalised as a model file's ``ln2d.input`` metadata says. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ln2d.data import Preprocessing, evaluation_data
from ln2d.errors import UserError
from ln2d.export import metadata
from ln2d.export.onnx_io import load_model


def model_inputs(model_path: Path, data: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs for a user's model, shaped and normalised as its ``ln2d.input`` metadata says:
    random ones, the digits, or an image folder (labels where its classes are the model's)."""
    from ln2d.data import load_digits, load_image_folder

    meta = metadata.read(load_model(Path(model_path)))
    if meta.input is None:
        raise UserError(f"{model_path} has no ln2d.input metadata: export it with ln2d export")
    spec = meta.input
    pre = Preprocessing(spec.channels, spec.height, spec.width, spec.mean, spec.std)
    if data == "random":
        return random_inputs(pre), None
    labels = meta.labels or ()
    if data == "digits":
        dataset = load_digits(pre.height, pre.channels)
    else:
        dataset = load_image_folder(Path(data), pre.channels, pre.height, pre.width)
    known = dataset.labels == labels
    return pre(dataset.images), dataset.targets if known else None


def checkpoint_inputs(checkpoint, data: str) -> tuple[np.ndarray, np.ndarray | None]:
    if data == "random":
        return random_inputs(checkpoint.preprocessing), None
    return evaluation_data(checkpoint, None if data == "digits" else Path(data))


def random_inputs(pre: Preprocessing) -> np.ndarray:
    """32 standard-normal inputs of the model's shape (``--data random``)."""
    shape = (32, pre.channels, pre.height, pre.width)
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)
