"""Real training on the bundled digits: accuracy, determinism, and the checkpoint round trip."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ln2d.checkpoint import load_checkpoint, save_checkpoint
from ln2d.data import Dataset, fit_preprocessing, load_digits, split
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


def test_training_keeps_images_uint8_until_a_batch():
    # 3,000 64x64 RGB images: 37 MB as uint8, 147 MB as float32. numpy's buffers are traced
    # (tracemalloc sees them): training may hold batches, never a float copy of the set.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3000, 64, 64, 3), np.uint8)
    targets = rng.integers(0, 4, 3000).astype(np.int64)
    data = Dataset(images, targets, tuple("abcd"))
    train_set, val_set = data.subset(np.arange(2500)), data.subset(np.arange(2500, 3000))
    pre = fit_preprocessing(train_set.images)
    model = SimpleLN_CNN(3, 4, (8, 8, 8))
    float_copy = images.size * 4
    config = TrainConfig(epochs=1, batch_size=256)
    # A first step on eight images: torch imports what it imports lazily outside the count.
    few = np.arange(8)
    train(model, train_set.subset(few), val_set.subset(few), pre, config, seed_everything(0), False)
    tracemalloc.start()
    try:
        train(model, train_set, val_set, pre, config, seed_everything(0), False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < float_copy / 2, f"peak {peak / 2**20:.0f} MiB traced during training"


def test_fit_preprocessing_in_chunks_equals_the_whole_set_at_once():
    images = np.random.default_rng(1).integers(0, 256, (300, 5, 7, 3), np.uint8)
    pre = fit_preprocessing(images, chunk=64)
    whole = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(pre.mean, whole.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(pre.std, whole.std(axis=(0, 1, 2)), rtol=1e-9)


@pytest.mark.parametrize("flags", [{"channels_last": True}, {"amp": "bf16"}])
def test_channels_last_and_bf16_training_learn_and_come_back_nchw(flags):
    train_set, val_set = split(load_digits(), 0.2, 0)
    pre = fit_preprocessing(train_set.images)
    model = SimpleLN_CNN(1, 10, (16, 32, 64))
    seen = []
    model.features[0][1].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    config = TrainConfig(epochs=3, seed=0, **flags)
    summary = train(model, train_set, val_set, pre, config, seed_everything(0), False)
    assert summary["val_accuracy"] >= 0.90
    norm_inputs = seen
    if config.amp:
        assert all(x.dtype == torch.bfloat16 for x in norm_inputs)
    else:
        assert all(x.is_contiguous(memory_format=torch.channels_last) for x in norm_inputs)
    conv = model.features[0][0].weight
    assert conv.device.type == "cpu" and conv.is_contiguous()  # as checkpoints store it
