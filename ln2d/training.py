"""A small, deterministic training loop and accuracy evaluation.

Images stay uint8 until a batch is made: each batch goes through the model's ``Preprocessing``
(the code the server runs on request bytes) on its way to the device, so a folder of 50,000
64x64 RGB photos holds 0.6 GB in memory, not 2.4 GB of float32.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ln2d.data import Dataset, Preprocessing
from ln2d.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"  # a torch device: cpu, cuda, cuda:1
    channels_last: bool = False  # the model and its batches in NHWC memory layout
    amp: str | None = None  # autocast to bf16 or fp16 (fp16 also scales the loss)

    def to_dict(self) -> dict:
        return asdict(self)


def pick_device(choice: str) -> torch.device:
    """``auto``: CUDA when this torch sees a GPU, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {choice}: this torch ({torch.__version__}) sees no CUDA GPU")
    return torch.device(choice)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight init) and return a generator for shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Float32 logits of a CPU model for preprocessed float32 ``(N, C, H, W)`` inputs."""
    model.eval()
    chunks = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).float().numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict_logits(model, x).argmax(1) == y).mean())


@dataclass(frozen=True)
class _Placement:
    """Where and how the model computes: device, memory layout, autocast."""

    device: torch.device
    memory_format: torch.memory_format
    amp: str | None

    @classmethod
    def of(cls, config: TrainConfig) -> _Placement:
        layout = torch.channels_last if config.channels_last else torch.contiguous_format
        return cls(torch.device(config.device), layout, config.amp)

    def batch(self, images: np.ndarray, preprocessing: Preprocessing) -> torch.Tensor:
        """uint8 ``(N, H, W, C)`` images -> the model's input on the device."""
        x = torch.from_numpy(preprocessing(images))
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.amp])


@torch.inference_mode()
def _accuracy_on(
    model: nn.Module, data: Dataset, preprocessing: Preprocessing, place: _Placement
) -> float:
    model.eval()
    correct, batch_size = 0, 512
    for i in range(0, len(data), batch_size):
        with place.autocast():
            logits = model(place.batch(data.images[i : i + batch_size], preprocessing))
        correct += int((logits.argmax(1).cpu().numpy() == data.targets[i : i + batch_size]).sum())
    return correct / len(data)


def train(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    preprocessing: Preprocessing,
    config: TrainConfig,
    generator: torch.Generator,
    progress: bool = True,
) -> dict:
    """AdamW + one-cycle schedule; returns a JSON-able summary with per-epoch history. The
    model trains where ``config`` says and comes back on the CPU in NCHW, as checkpoints
    store it."""
    place = _Placement.of(config)
    model.to(place.device, memory_format=place.memory_format)
    targets = torch.from_numpy(train_data.targets).to(place.device)
    count = len(train_data)
    steps_per_epoch = -(-count // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=config.epochs * steps_per_epoch
    )
    # fp16's range is short enough for small gradients to flush to zero: scale the loss.
    scaler = torch.amp.GradScaler(place.device.type, enabled=config.amp == "fp16")
    loss_fn = nn.CrossEntropyLoss()
    history = []
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(count, generator=generator).numpy()
        total_loss = torch.zeros((), device=place.device)
        for i in range(0, count, config.batch_size):
            index = order[i : i + config.batch_size]
            x = place.batch(train_data.images[index], preprocessing)
            with place.autocast():
                loss = loss_fn(model(x), targets[index])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            total_loss += loss.detach().float() * len(index)  # no device sync per step
        epoch_loss = total_loss.item() / count
        val_acc = _accuracy_on(model, val_data, preprocessing, place)
        history.append({"epoch": epoch + 1, "loss": epoch_loss, "val_accuracy": val_acc})
        bar.set_postfix(loss=f"{epoch_loss:.4f}", val_acc=f"{val_acc:.4f}")
    model.to("cpu", memory_format=torch.contiguous_format)
    return {
        "config": config.to_dict(),
        "history": history,
        "val_accuracy": history[-1]["val_accuracy"],
        "train_samples": count,
        "val_samples": len(val_data),
        "seconds": round(time.perf_counter() - start, 2),
    }
