"""``ln2d train``, ``ln2d eval`` and ``ln2d info``. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ln2d.cli import int_list
from ln2d.constants import AMP_DTYPES, DEVICES, NORMS
from ln2d.errors import UserError

DEFAULT_CHECKPOINT = Path("artifacts/model.safetensors")


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a SimpleLN_CNN (digits by default) and save a checkpoint",
        description="Train SimpleLN_CNN on scikit-learn's bundled digits or an ImageFolder tree.",
    )
    train.add_argument("--data", type=Path, help="ImageFolder-style directory (default: digits)")
    train.add_argument("--epochs", type=int, default=12)
    train.add_argument(
        "--norm",
        default="layernorm2d",
        choices=NORMS,
    )
    train.add_argument("--widths", type=int_list, default=(32, 64, 128), help="e.g. 32,64,128")
    train.add_argument("--eps", type=float, default=1e-6, help="norm epsilon")
    train.add_argument("--out", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint path")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--val-fraction", type=float, default=0.2)
    train.add_argument("--size", type=int, help="input height = width (default: 16 digits, 32)")
    train.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        help="input channels (default: 1 for the digits, gray replicated with 3; 3 for --data)",
    )
    train.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto (default): CUDA if there is one"
    )
    train.add_argument(
        "--channels-last",
        action="store_true",
        help="train in NHWC memory layout (faster convolutions on most hardware)",
    )
    train.add_argument(
        "--amp",
        choices=AMP_DTYPES,
        help="mixed precision: autocast to bf16, or to fp16 with a loss scaler; LayerNorm2d "
        "keeps fp32 statistics either way (default: fp32 throughout)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(run=run_train, extra="torch")

    evaluate = commands.add_parser(
        "eval",
        help="print a checkpoint's accuracy",
        description="Accuracy on the validation split of the training data (digits), or on DIR.",
    )
    add_checkpoint_arguments(evaluate)
    evaluate.add_argument("--data", type=Path, help="ImageFolder directory (default: digits)")
    evaluate.set_defaults(run=run_eval, extra="torch")

    info = commands.add_parser("info", help="describe a checkpoint")
    add_checkpoint_arguments(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(run=run_info, extra="torch")

    samples = commands.add_parser(
        "samples",
        help="write sample images to try a server with: digits (PNG) and two photos (JPEG)",
        description="Write to DIR the first --count digits of the validation split as 16x16 "
        "PNGs (the digits model's own input size) and scikit-learn's two bundled photos, "
        "china.jpg and flower.jpg, as they ship (real JPEG bytes).",
    )
    samples.add_argument("out", type=Path, metavar="DIR")
    samples.add_argument("--count", type=int, default=4, help="how many digits (default: 4)")
    samples.set_defaults(run=run_samples, extra="torch")


def add_checkpoint_arguments(
    parser: argparse.ArgumentParser, optional: bool = False, positional: bool = True
) -> None:
    """CKPT (unless the command takes it among other files) plus the flags that describe a
    plain .pt/.pth state dict (ignored for ln2d files)."""
    if positional:
        parser.add_argument(
            "checkpoint",
            type=Path,
            nargs="?" if optional else None,
            metavar="CKPT",
            help="a SimpleLN_CNN checkpoint: .safetensors, .pt or .pth",
        )
    group = parser.add_argument_group("plain state dict (.pt/.pth) architecture flags")
    group.add_argument("--norm", default="layernorm2d", help="norm layer the weights were for")
    group.add_argument("--eps", type=float, default=1e-6, help="norm epsilon")
    group.add_argument("--labels", type=_labels, help="comma-separated class names, or @FILE")
    group.add_argument("--size", type=int, default=32, help="input height = width")
    group.add_argument("--mean", type=_floats, help="per-channel mean, e.g. 0.485,0.456,0.406")
    group.add_argument("--std", type=_floats, help="per-channel std")


def load_from_args(args: argparse.Namespace, path: Path | None = None):
    """The checkpoint ``path`` (default: CKPT), read with the state-dict flags."""
    from ln2d.checkpoint import StateDictFlags, load_checkpoint

    flags = StateDictFlags(args.norm, args.eps, args.labels, args.size, args.mean, args.std)
    try:
        return load_checkpoint(path or args.checkpoint, flags)
    except ValueError as exc:  # ModelConfig validation, e.g. an unknown --norm
        raise UserError(str(exc)) from exc


def run_train(args: argparse.Namespace) -> int:
    from ln2d.checkpoint import save_checkpoint
    from ln2d.data import DIGITS_SIZE, fit_preprocessing, load_digits, load_image_folder, split
    from ln2d.model import SimpleLN_CNN
    from ln2d.training import TrainConfig, pick_device, seed_everything, train

    device = pick_device(args.device)
    if args.data is None:
        dataset = load_digits(args.size or DIGITS_SIZE, args.channels or 1)
    else:
        size = args.size or 32
        dataset = load_image_folder(args.data, args.channels or 3, size, size)
    config = TrainConfig(
        args.epochs,
        args.batch_size,
        args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=str(device),
        channels_last=args.channels_last,
        amp=args.amp,
    )
    train_set, val_set = split(dataset, config.val_fraction, config.seed)
    del dataset  # the split holds copies: keep one set of images in memory
    preprocessing = fit_preprocessing(train_set.images)
    generator = seed_everything(config.seed)
    labels = train_set.labels
    try:
        model = SimpleLN_CNN(preprocessing.channels, len(labels), args.widths, args.norm, args.eps)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if min(preprocessing.height, preprocessing.width) < model.config.min_input_size:
        raise UserError(
            f"input size {preprocessing.height} is below {model.config.min_input_size}, "
            f"the minimum for {len(args.widths)} pooling stages"
        )
    summary = train(
        model, train_set, val_set, preprocessing, config, generator, progress=not args.no_progress
    )
    summary["data"] = "digits" if args.data is None else str(args.data)
    path = save_checkpoint(args.out, model, preprocessing, labels, summary)
    print(
        f"validation accuracy {summary['val_accuracy']:.4f} "
        f"({summary['val_samples']} images, {summary['seconds']:.1f} s); checkpoint: {path}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ln2d.data import evaluation_data
    from ln2d.training import accuracy

    checkpoint = load_from_args(args)
    x, y = evaluation_data(checkpoint, args.data)
    acc = accuracy(checkpoint.model(), x, y)
    print(f"accuracy {acc:.4f} on {len(y)} images ({args.data or 'digits validation split'})")
    return 0


def run_info(args: argparse.Namespace) -> int:
    checkpoint = load_from_args(args)
    info = {
        "checkpoint": str(checkpoint.path),
        "sha256": checkpoint.sha256,
        "architecture": checkpoint.config.to_dict(),
        "parameters": checkpoint.num_parameters,
        "labels": list(checkpoint.labels),
        "preprocessing": checkpoint.preprocessing.to_dict(),
        "training": {k: v for k, v in checkpoint.training.items() if k != "history"},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    config, pre = checkpoint.config, checkpoint.preprocessing
    print(f"checkpoint   {checkpoint.path}  (sha256 {checkpoint.sha256[:16]}…)")
    print(
        f"architecture SimpleLN_CNN(in_channels={config.in_channels}, "
        f"num_classes={config.num_classes}, widths={config.widths}, norm={config.norm}, "
        f"eps={config.eps:g})"
    )
    print(f"parameters   {checkpoint.num_parameters:,}")
    print(f"labels       {', '.join(checkpoint.labels)}")
    print(
        f"input        {pre.channels}x{pre.height}x{pre.width}, "
        f"mean {_fmt(pre.mean)}, std {_fmt(pre.std)}"
    )
    if "val_accuracy" in checkpoint.training:
        t = checkpoint.training
        print(
            f"training     {t.get('data')}: {len(t.get('history', []))} epochs, "
            f"val accuracy {t['val_accuracy']:.4f}, {t.get('seconds')} s"
        )
    return 0


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _labels(text: str) -> tuple[str, ...]:
    if text.startswith("@"):
        return tuple(line.strip() for line in Path(text[1:]).read_text().splitlines() if line)
    return tuple(v.strip() for v in text.split(","))


def run_samples(args: argparse.Namespace) -> int:
    from shutil import copyfile

    from PIL import Image
    from sklearn.datasets import load_sample_images

    from ln2d.data import load_digits, split

    args.out.mkdir(parents=True, exist_ok=True)
    _, val = split(load_digits(), 0.2, seed=0)
    for i, (image, target) in enumerate(zip(val.images[: args.count], val.targets, strict=False)):
        path = args.out / f"digit-{i}-label-{val.labels[target]}.png"
        Image.fromarray(image[:, :, 0]).save(path)
        print(path)
    for photo in load_sample_images().filenames:
        path = args.out / Path(photo).name
        copyfile(photo, path)
        print(path)
    return 0
