"""A small, deterministic training loop and accuracy evaluation for in-memory datasets."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight init) and return a generator for shuffling."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


@torch.inference_mode()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    model.eval()
    chunks = [model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).float().numpy()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float((predict_logits(model, x).argmax(1) == y).mean())


def train(
    model: nn.Module,
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    generator: torch.Generator,
    progress: bool = True,
) -> dict:
    """AdamW + one-cycle schedule; returns a JSON-able summary with per-epoch history."""
    x = torch.from_numpy(train_xy[0])
    y = torch.from_numpy(train_xy[1])
    steps_per_epoch = -(-len(x) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    history = []
    start = time.perf_counter()
    bar = tqdm(range(config.epochs), desc="train", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total_loss = 0.0
        for i in range(0, len(x), config.batch_size):
            index = order[i : i + config.batch_size]
            loss = loss_fn(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(index)
        val_acc = accuracy(model, *val_xy)
        history.append({"epoch": epoch + 1, "loss": total_loss / len(x), "val_accuracy": val_acc})
        bar.set_postfix(loss=f"{total_loss / len(x):.4f}", val_acc=f"{val_acc:.4f}")
    return {
        "config": config.to_dict(),
        "history": history,
        "val_accuracy": history[-1]["val_accuracy"],
        "train_samples": len(x),
        "val_samples": len(val_xy[1]),
        "seconds": round(time.perf_counter() - start, 2),
    }
