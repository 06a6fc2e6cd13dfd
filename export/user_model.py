"""A user's own network, built by their own code: ``--model pkg.module:factory``.

The factory (a function or a class, called with no arguments) is imported from the working
directory or PYTHONPATH, so it runs the user's code, as ``--help`` says. The weights are
tensors only (``ln2d.checkpoint.load_weights``: safetensors, or ``torch.load`` with
``weights_only=True``), and every way they can fail to fit gets one line naming it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
from torch import nn

from ln2d.checkpoint import load_weights
from ln2d.errors import UserError


def build(spec: str, weights: Path | None) -> nn.Module:
    """The module ``spec`` names, with ``weights`` loaded strictly, in eval mode."""
    factory = _factory(spec)
    try:
        module = factory()
    except TypeError as exc:
        raise UserError(f"--model {spec}: calling it with no arguments failed ({exc})") from exc
    if not isinstance(module, nn.Module):
        raise UserError(f"--model {spec} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load(module, load_weights(weights), weights)
    return module.eval()


def _factory(spec: str):
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(f"--model {spec!r}: expected MODULE:NAME, e.g. mypkg.models:build")
    if "" not in sys.path:  # the user's code lives where they run the command
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"--model {spec}: cannot import {module_name!r} ({exc})") from exc
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise UserError(f"--model {spec}: {module_name!r} has no {attribute!r}") from None
    if not callable(factory):
        raise UserError(f"--model {spec}: {attribute!r} is not a function or class")
    return factory


def _load(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = [f"missing {_few(missing)}" if missing else "",
                 f"unexpected {_few(unexpected)}" if unexpected else ""]  # fmt: skip
        raise UserError(f"{path} does not fit the model: {'; '.join(p for p in parts if p)}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise UserError(
                f"{path} does not fit the model: {key} has shape {tuple(tensor.shape)}, "
                f"the model wants {tuple(expected[key].shape)}"
            )
    module.load_state_dict(state)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:3])
    return f"{len(keys)} key(s): {shown}" + (", ..." if len(keys) > 3 else "")
