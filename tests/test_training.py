"""Real training on the bundled digits: accuracy, determinism, and the checkpoint round trip."""

from __future__ import annotations

import numpy as np
import torch
from safetensors import safe_open

from ln2d.checkpoint import load_checkpoint, save_checkpoint
from ln2d.data import fit_preprocessing, load_digits, split
from ln2d.model import SimpleLN_CNN
from ln2d.training import TrainConfig, accuracy, predict_logits, seed_everything, train


def _short_run(seed: int, epochs: int = 3):
    train_set, val_set = split(load_digits(), 0.2, seed)
    pre = fit_preprocessing(train_set.images)
    generator = seed_everything(seed)
    model = SimpleLN_CNN(1, 10, (16, 32, 64))
    val = (pre(val_set.images), val_set.targets)
    summary = train(
        model, train_set, val_set, pre, TrainConfig(epochs=epochs, seed=seed), generator, False
    )
    return model, pre, val, summary


def test_short_training_learns_digits_and_is_deterministic():
    model_a, _, val, summary = _short_run(seed=7)
    # Chance is 10%; three epochs of a small model must be far past it.
    assert summary["val_accuracy"] >= 0.90
    assert accuracy(model_a, *val) == summary["val_accuracy"]
    model_b, _, _, _ = _short_run(seed=7)
    for (name, a), (_, b) in zip(
        model_a.state_dict().items(), model_b.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_default_cli_training_reaches_97_percent(digits_checkpoint):
    checkpoint = load_checkpoint(digits_checkpoint)
    assert checkpoint.training["val_accuracy"] >= 0.97
    assert checkpoint.training["data"] == "digits"


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model, pre, (x, _), summary = _short_run(seed=3, epochs=1)
    path = save_checkpoint(tmp_path / "m.safetensors", model, pre, tuple("0123456789"), summary)
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.preprocessing == pre
    assert loaded.labels == tuple("0123456789")
    np.testing.assert_array_equal(predict_logits(loaded.model(), x), predict_logits(model, x))
    # Plain safetensors: any reader sees the tensors and the JSON metadata.
    with safe_open(str(path), framework="np") as f:
        assert set(f.keys()) == set(model.state_dict())
        assert '"format": "ln2d.checkpoint/1"' in f.metadata()["ln2d"]


def test_digits_preprocessing_is_documented_shape():
    data = load_digits()
    assert data.images.shape == (1797, 16, 16, 1) and data.images.dtype == np.uint8
    # White ink on black: the brightest pixel is full scale, the left border is background.
    assert data.images.max() == 255
    assert (data.images[:, :, 0] == 0).mean() > 0.95
