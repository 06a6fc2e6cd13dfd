"""Checkpoints: one safetensors file whose header metadata carries everything but the weights.

Format (``ln2d.checkpoint/1``): the tensors of ``SimpleLN_CNN.state_dict()`` plus one metadata
key, ``ln2d``, holding JSON with ``format``, ``config`` (ModelConfig), ``preprocessing``,
``labels`` and ``training`` (the run's summary). safetensors holds raw tensors only, so loading
never runs code. A user's plain PyTorch state dict (``.pt`` / ``.pth``) loads too, through
``torch.load(weights_only=True)``, with the architecture read from its shapes and flags.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ln2d import __version__
from ln2d.data import Preprocessing
from ln2d.errors import UserError
from ln2d.model import ModelConfig, SimpleLN_CNN

FORMAT = "ln2d.checkpoint/1"
METADATA_KEY = "ln2d"


@dataclass(frozen=True)
class StateDictFlags:
    """What a bare state dict cannot say about itself: given on the command line."""

    norm: str = "layernorm2d"
    eps: float = 1e-6
    labels: tuple[str, ...] | None = None
    size: int = 32
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Checkpoint:
    config: ModelConfig
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    state_dict: dict[str, torch.Tensor]
    training: dict = field(default_factory=dict)
    sha256: str = ""
    path: Path | None = None

    def model(self) -> SimpleLN_CNN:
        """The model in eval mode with these weights loaded."""
        model = SimpleLN_CNN.from_config(self.config)
        _check_fits(model, self.state_dict, self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for k, t in self.state_dict.items() if not _is_buffer(k))


def save_checkpoint(
    path: Path,
    model: SimpleLN_CNN,
    preprocessing: Preprocessing,
    labels: tuple[str, ...],
    training: dict,
) -> Path:
    from safetensors.torch import save_file

    meta = {
        "format": FORMAT,
        "ln2d_version": __version__,
        "config": model.config.to_dict(),
        "preprocessing": preprocessing.to_dict(),
        "labels": list(labels),
        "training": training,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def load_checkpoint(path: Path, flags: StateDictFlags | None = None) -> Checkpoint:
    """An ln2d safetensors checkpoint, or a plain ``.pt``/``.pth`` state dict plus ``flags``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if path.suffix in {".pt", ".pth", ".bin"}:
        state = _load_state_dict(path)
        return _checkpoint_from_state_dict(state, flags or StateDictFlags(), digest, path)
    return _load_safetensors(path, digest)


def _load_safetensors(path: Path, digest: str) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    except Exception as exc:  # safetensors raises its own and OS errors for corrupt files
        raise UserError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    if METADATA_KEY not in metadata:
        raise UserError(f"{path} has no ln2d metadata: it was not written by `ln2d train`")
    try:
        meta = json.loads(metadata[METADATA_KEY])
        if meta.get("format") != FORMAT:
            raise UserError(f"{path} has checkpoint format {meta.get('format')!r}, need {FORMAT}")
        checkpoint = Checkpoint(
            config=ModelConfig.from_dict(meta["config"]),
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            labels=tuple(meta["labels"]),
            state_dict=state,
            training=meta.get("training", {}),
            sha256=digest,
            path=path,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} has malformed ln2d metadata ({exc})") from exc
    _check_fits(SimpleLN_CNN.from_config(checkpoint.config), state, checkpoint.config)
    return checkpoint


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a .pt/.pth state dict; never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    if path.suffix != ".safetensors":
        return _load_state_dict(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable safetensors file ({exc})") from exc


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global beyond tensors and containers: this is that refusal.
        first = str(exc).strip().splitlines()[0]
        raise UserError(
            f"refusing to load {path}: it holds Python objects, not just tensors "
            f"(torch.load weights_only=True said: {first})"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path} is not a readable PyTorch state dict ({exc})") from exc
    # Common wrappers: {"state_dict": ...}, {"model": ...}, DataParallel's "module." prefix.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _checkpoint_from_state_dict(
    state: dict[str, torch.Tensor], flags: StateDictFlags, digest: str, path: Path
) -> Checkpoint:
    convs = sorted(
        (k for k in state if k.startswith("features.") and k.endswith(".0.weight")),
        key=lambda k: int(k.split(".")[1]),
    )
    if not convs or "head.weight" not in state:
        raise UserError(
            f"{path} does not look like a SimpleLN_CNN state dict "
            "(expected features.<i>.0.weight and head.weight)"
        )
    widths = tuple(state[k].shape[0] for k in convs)
    in_channels = state[convs[0]].shape[1]
    num_classes = state["head.weight"].shape[0]
    config = ModelConfig(in_channels, num_classes, widths, flags.norm, flags.eps)
    labels = flags.labels or tuple(str(i) for i in range(num_classes))
    if len(labels) != num_classes:
        raise UserError(f"{len(labels)} labels given but the model has {num_classes} classes")
    preprocessing = Preprocessing(
        in_channels,
        flags.size,
        flags.size,
        flags.mean or (0.5,) * in_channels,
        flags.std or (0.5,) * in_channels,
    )
    if len(preprocessing.mean) != in_channels or len(preprocessing.std) != in_channels:
        raise UserError(f"--mean and --std need {in_channels} values, one per input channel")
    _check_fits(SimpleLN_CNN.from_config(config), state, config)
    training = {"source": "plain state dict"}
    return Checkpoint(config, preprocessing, labels, state, training, digest, path)


def _check_fits(model: SimpleLN_CNN, state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """One readable line instead of load_state_dict's multi-line report."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = (
        ([f"missing {', '.join(missing[:3])}"] if missing else [])
        + ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else [])
        + wrong[:3]
    )
    if problems:
        arch = f"SimpleLN_CNN(widths={config.widths}, norm={config.norm})"
        raise UserError(f"weights do not fit {arch}: {'; '.join(problems)}")


def _is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))
