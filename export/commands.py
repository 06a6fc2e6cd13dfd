"""``ln2d export``, ``ln2d fuse`` and ``ln2d parity``. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ln2d.cli import int_list
from ln2d.commands import add_checkpoint_arguments, load_from_args
from ln2d.constants import (
    DEFAULT_INT8_SCHEME,
    DEFAULT_TARGET,
    DEVICES,
    INT8_SCHEMES,
    PROVIDERS,
    TARGETS,
)
from ln2d.errors import UserError, writing

DEFAULT_TRAIN_SHAPES = ((32, 96, 56, 56), (8, 256, 28, 28), (64, 64, 32, 32))
TARGET_HELP = (
    "runtime to fuse for: per site, a form ln2d bench measured never slower than the input's "
    "own form in its context, already-fused sites kept as they came (cpu); ln2d's own "
    "kernel, which needs ln2d.native where the model runs (cpu-native); or one "
    "LayerNormalization where the opset has it (cuda, portable); default: cpu"
)


def register(commands: argparse._SubParsersAction) -> None:
    for add in (
        _add_export,
        _add_fuse,
        _add_parity,
        _add_quantize,
        _add_bench,
        _add_bench_train,
        _add_bench_fuse,
        _add_triton_repo,
    ):
        add(commands)


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="export a checkpoint, or your own model, to ONNX with every LayerNorm2d fused",
        description="Export CKPT, or the network --model builds with --weights loaded, to ONNX "
        "(dynamic batch, height, width) with serving metadata; every LayerNorm2d is "
        "pattern-matched and replaced by a fused subgraph, and the result passes the gate.",
    )
    _add_source_arguments(export)
    export.add_argument(
        "--input", type=_chw, metavar="CxHxW", help="--model: the input's size, e.g. 3x224x224"
    )
    export.add_argument("-o", "--output", type=Path, required=True, help="model.onnx to write")
    export.add_argument(
        "--opset", type=int, help="ONNX opset (default: 23, for --target cuda 21; at least 18)"
    )
    export.add_argument("--no-fuse", action="store_true", help="keep the decomposed graph")
    export.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET, help=TARGET_HELP)
    export.add_argument("--report", type=Path, help="write the fusion report as JSON")
    export.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="fp16 (for GPUs): weights and activations in half precision, each LayerNorm2d's "
        "statistics in fp32, inputs and outputs in fp32 (default: fp32)",
    )
    export.set_defaults(run=run_export, extra="export,cpu")


def run_export(args: argparse.Namespace) -> int:
    from ln2d.export.onnx_export import default_opset, export_checkpoint, export_module
    from ln2d.export.onnx_io import save_model

    options = {"target": args.target, "opset": args.opset, "fuse": not args.no_fuse}
    options["precision"] = args.precision
    if _user_model(args):
        model, example, preprocessing = _user_network(args)
        report = export_module(
            model, example, args.output, labels=args.labels, preprocessing=preprocessing, **options
        )
    else:
        proto, report = export_checkpoint(load_from_args(args), **options)
        save_model(proto, args.output)
    if report is not None:
        print(report.table())
        _write(args.report, report.to_json())
    opset = args.opset or default_opset(args.target)
    print(f"wrote {args.output} (opset {opset}, {args.precision})")
    return 0


def _user_network(args: argparse.Namespace):
    """--model's network, an example input of --input's size, and --mean / --std."""
    import torch

    from ln2d.export.user_model import build

    if args.input is None:
        raise UserError("--model needs --input CxHxW, the size of one input image")
    channels, height, width = args.input
    preprocessing = {
        "mean": args.mean or (0.0,) * channels,
        "std": args.std or (1.0,) * channels,
    }
    model = build(args.user_model, args.weights)
    return model, torch.zeros(2, channels, height, width), preprocessing


def _add_source_arguments(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    """CKPT (a SimpleLN_CNN checkpoint), or --model and --weights for any network."""
    add_checkpoint_arguments(parser, optional=True, positional=positional)
    own = parser.add_argument_group("your own network (instead of CKPT)")
    own.add_argument(
        "--model",
        dest="user_model",
        metavar="MODULE:NAME",
        help="a function or class that builds your network, called with no arguments, "
        "imported from the working directory or PYTHONPATH: this RUNS THAT CODE",
    )
    own.add_argument(
        "--weights",
        type=Path,
        help="its weights: .safetensors, or a .pt/.pth state dict (tensors only, never unpickled)",
    )


def _user_model(args: argparse.Namespace) -> bool:
    """True for --model; CKPT otherwise. Exactly one of the two."""
    if args.user_model and args.checkpoint:
        raise UserError("give CKPT or --model, not both")
    if not args.user_model and not args.checkpoint:
        raise UserError("give a checkpoint CKPT, or --model MODULE:NAME with --weights")
    return bool(args.user_model)


def _chw(text: str) -> tuple[int, int, int]:
    """argparse type for "3x224x224"."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected CxHxW, e.g. 3x224x224, got {text!r}")
    channels, height, width = map(int, parts)
    return channels, height, width


def _add_fuse(commands: argparse._SubParsersAction) -> None:
    fuse = commands.add_parser(
        "fuse",
        help="fuse every per-pixel channel LayerNorm in any ONNX model",
        description="Find every per-pixel channel LayerNorm in IN.onnx (opset 13+), whichever "
        "way it is written, and replace it with standard ONNX ops of the model's own opset; "
        "report every candidate site. Nothing is written unless the result passes "
        "onnx.checker, loads in ONNX Runtime and matches IN.onnx on random inputs at two "
        "shapes (exit 1 otherwise).",
    )
    fuse.add_argument("input", type=Path, metavar="IN.onnx")
    fuse.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    fuse.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET, help=TARGET_HELP)
    fuse.add_argument(
        "--opset", type=int, help="first raise the model to this opset (onnx's version converter)"
    )
    fuse.add_argument(
        "--tune",
        action="store_true",
        help="time each site's candidate forms, its original among them, inside the whole "
        "model on this machine's ONNX Runtime (CPU) and keep the fastest; the input model "
        "comes back unchanged unless the result beats it (replaces --target)",
    )
    fuse.add_argument(
        "--shape",
        type=int_list,
        action="append",
        metavar="N,C,H,W",
        help="input shape to tune at, repeatable (default: batch 1 at the model's own size, "
        "or 224x224 where it is dynamic)",
    )
    fuse.add_argument(
        "--threads", type=int, default=0, help="--tune: intra-op threads (0 = the CPU quota)"
    )
    fuse.add_argument(
        "--external-data",
        action="store_true",
        help="write the weights to OUT.onnx.data beside the model (the default when IN.onnx "
        "keeps its weights outside itself, and whenever they are over 2 GB)",
    )
    fuse.add_argument("--report", type=Path, help="write the fusion report as JSON")
    fuse.add_argument(
        "--no-progress", action="store_true", help="no progress bars (--tune, large models)"
    )
    fuse.set_defaults(run=run_fuse, extra="export,cpu")


def run_fuse(args: argparse.Namespace) -> int:
    from ln2d.export.fusion.files import FuseFileOptions, fuse_file

    options = FuseFileOptions(
        target=args.target,
        opset=args.opset,
        tune=args.tune,
        shapes=tuple(args.shape or ()),
        threads=args.threads,
        external_data=args.external_data,
        progress=not args.no_progress,
    )
    fused = fuse_file(args.input, args.output, options)
    print(fused.report.table())
    _write(args.report, fused.report.to_json())
    print(f"wrote {args.output}" + (f" and {args.output.name}.data" if fused.external else ""))
    return 0


def _add_parity(commands: argparse._SubParsersAction) -> None:
    parity = commands.add_parser(
        "parity",
        help="compare PyTorch against ONNX Runtime (CPU, CUDA) and fused against unfused",
        description="Compare CKPT, or the network --model builds with --weights loaded, with "
        "MODEL.onnx: elementwise within tolerances for a float model, by accuracy and top-1 "
        "agreement for an int8 one (ln2d quantize). Given only ONNX files, replay the parity "
        "record each carries (written by ln2d export, fuse and quantize) on this machine's "
        "providers. Exit code 0 only when every requested comparison passed.",
    )
    # One list of files: CKPT first unless --model, then the ONNX files. A CKPT positional of
    # its own would take the first ONNX file whenever --model is given.
    _add_source_arguments(parity, positional=False)
    parity.add_argument(
        "files",
        type=Path,
        nargs="+",
        metavar="[CKPT] MODEL.onnx",
        help="CKPT (not with --model), then one or more ONNX files: an fp32 export, its int8 "
        "and fp16 variants ... (compared in a summary); ONNX files alone: replay each one's "
        "own parity record on this machine",
    )
    parity.add_argument(
        "--providers",
        default="auto",
        help="comma list of cpu,cuda; 'auto' = cpu, plus cuda when available (default)",
    )
    parity.add_argument(
        "--data",
        help="digits (the validation split), random, or an image DIR "
        "(default: digits for CKPT, random for --model)",
    )
    parity.add_argument("--atol", type=float, help="absolute tolerance (default: by dtype)")
    parity.add_argument("--rtol", type=float, help="relative tolerance (default: by dtype)")
    parity.add_argument(
        "--max-accuracy-drop",
        type=float,
        metavar="POINTS",
        help="fail when accuracy falls by more than this many percentage points (default: 0.5 "
        "for an int8 model, none otherwise)",
    )
    parity.add_argument(
        "--min-agreement",
        type=float,
        metavar="FRACTION",
        help="fail when top-1 agreement is below this (default: 0.99 for an int8 model, none "
        "otherwise). An int8 model is held to these gates instead of --atol/--rtol",
    )
    parity.add_argument("--json", type=Path, help="write the parity report as JSON")
    parity.add_argument(
        "--bisect", action="store_true", help="on failure, name the first diverging LayerNorm2d"
    )
    parity.set_defaults(run=run_parity, extra="export,cpu")


def run_parity(args: argparse.Namespace) -> int:
    from ln2d.export.parity.check import check_parity, run_parity_checks
    from ln2d.export.parity.report import ParityOptions, precision_summary

    user_model = bool(args.user_model)
    if not user_model and all(path.suffix == ".onnx" for path in args.files):
        return _replay_records(args)
    checkpoint, models = (None, args.files) if user_model else (args.files[0], args.files[1:])
    if not models:
        raise UserError("give CKPT and one or more MODEL.onnx, or --model with MODEL.onnx")
    options = ParityOptions(
        providers=args.providers,
        data=args.data or ("random" if user_model else "digits"),
        atol=args.atol,
        rtol=args.rtol,
        bisect=args.bisect,
        max_accuracy_drop=args.max_accuracy_drop,
        min_agreement=args.min_agreement,
    )
    if user_model:
        from ln2d.export.parity.inputs import model_inputs
        from ln2d.export.user_model import build

        network = build(args.user_model, args.weights)
        x, labels = model_inputs(models[0], options.data)
        reports = [check_parity(network, path, x, options, labels) for path in models]
    else:
        source = load_from_args(args, checkpoint)
        reports = [run_parity_checks(source, path, options) for path in models]
    print("\n\n".join(report.table() for report in reports))
    if len(reports) > 1:
        print("\n" + precision_summary(reports))
    # One model: its report, as before; several: the list of them.
    dumped = [json.loads(report.to_json()) for report in reports]
    _write(args.json, json.dumps(dumped[0] if len(dumped) == 1 else dumped, indent=2))
    return 0 if all(report.passed for report in reports) else 1


def _replay_records(args: argparse.Namespace) -> int:
    """Each model's own parity record, replayed here (no checkpoint needed)."""
    from ln2d.export.parity.replay import replay_file
    from ln2d.export.parity.report import providers

    requested, listed = providers(args.providers)
    reports = [replay_file(path, listed, requested) for path in args.files]
    print("\n\n".join(report.table() for report in reports))
    dumped = [json.loads(report.to_json()) for report in reports]
    _write(args.json, json.dumps(dumped[0] if len(dumped) == 1 else dumped, indent=2))
    return 0 if all(report.passed for report in reports) else 1


def _add_quantize(commands: argparse._SubParsersAction) -> None:
    quantize = commands.add_parser(
        "quantize",
        help="INT8 (QDQ) quantization with every LayerNorm2d kept in float",
        description="Fuse MODEL.onnx, calibrate on real images through the model's own "
        "preprocessing (its ln2d.input metadata), and write a static INT8 model in QDQ format "
        "whose LayerNorm2d sites stay in float. Reports accuracy and top-1 agreement against "
        "the float model on the images not used for calibration.",
    )
    quantize.add_argument("model", type=Path, metavar="MODEL.onnx")
    quantize.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    quantize.add_argument(
        "--calibrate", default="digits", metavar="digits|DIR",
        help="calibration images: the digits, or an image folder (default: digits)",
    )  # fmt: skip
    quantize.add_argument(
        "--samples", type=int, default=256, help="calibration images (default: 256)"
    )
    quantize.add_argument(
        "--per-channel", action="store_true", help="one scale per output channel of each weight"
    )
    quantize.add_argument(
        "--scheme",
        choices=INT8_SCHEMES,
        default=DEFAULT_INT8_SCHEME,
        help="how weights are stored, activations being uint8: u8s7 (7-bit weights; the "
        "default), the same accuracy on every x86-64 CPU; u8s8, which loses accuracy on CPUs "
        "without VNNI (most AVX2 machines); u8u8, unsigned weights",
    )
    quantize.add_argument("--json", type=Path, help="write the report as JSON")
    quantize.add_argument("--no-progress", action="store_true", help="no progress bar")
    quantize.set_defaults(run=run_quantize, extra="export,cpu")


def run_quantize(args: argparse.Namespace) -> int:
    from ln2d.export.quantize import QuantizeOptions, quantize

    if not args.model.is_file():
        raise UserError(f"model file not found: {args.model}")
    options = QuantizeOptions(
        args.calibrate,
        args.samples,
        args.per_channel,
        progress=not args.no_progress,
        scheme=args.scheme,
    )
    report = quantize(args.model, args.output, options)
    print(report.table())
    _write(args.json, json.dumps(report.to_dict(), indent=2))
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="time every fused LayerNorm2d form against the decomposed graph, per provider",
        description="For each network and grid point (N, C, S, S), time the decomposed "
        "export, the same network without its norms, every fused form, what each --target "
        "picks and (convnext-atto) what fuse --tune picks, side by side in a torch-free "
        "subprocess with spinning off, a shuffled order and an A/A control (decomposed "
        "twice); then PyTorch eager in a phase of its own. Reports medians, ratios to "
        "decomposed and the LN2d's effective GB/s beside a copy. convnext-atto runs at "
        "224x224 (batch 1 and 8 unless --batch), whatever the grid. Graphs are exported at "
        "the opset export writes for the providers' targets (21 with cuda, else 23). Prints "
        "markdown tables; --json writes all.",
    )
    bench.add_argument(
        "--model",
        type=_names,
        default=("ln2d", "convnext-block", "simple", "convnext-atto"),
        help="comma list of ln2d, convnext-block, simple, convnext-atto (default: all)",
    )
    bench.add_argument("--providers", type=_names, default=("cpu", "cuda"), help="cpu,cuda")
    bench.add_argument(
        "--batch", type=int_list, help="e.g. 1,8,32 (default: 1,8,32; convnext-atto: 1,8)"
    )
    bench.add_argument(
        "--channels", type=int_list, default=(32, 96, 256), help="C (simple: fixed at 3)"
    )
    bench.add_argument("--spatial", type=int_list, default=(8, 28, 56), help="H = W")
    bench.add_argument("--seconds", type=float, default=0.5, help="time per variant and grid point")
    bench.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (0 = the CPU quota's cores)"
    )
    bench.add_argument(
        "--profile",
        action="store_true",
        help="also print ONNX Runtime's per-op profile of decomposed, no-norm and the picks",
    )
    bench.add_argument(
        "--int8",
        action="store_true",
        help="also time an INT8 variant, quantized as ln2d quantize does (calibrated on random "
        "inputs: the networks' weights are random too)",
    )
    bench.add_argument(
        "--fp16",
        action="store_true",
        help="also time each fused form's fp16 twin (export --precision fp16) and PyTorch "
        "eager in fp16, on CUDA; not on CPU",
    )
    bench.add_argument("--json", type=Path, help="write the results as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(run=run_bench, extra="export,cpu")


def run_bench(args: argparse.Namespace) -> int:
    from ln2d.cpu_quota import available_cpus
    from ln2d.export.bench import BenchOptions, run, table
    from ln2d.export.bench_models import NETWORKS

    unknown = sorted(set(args.model) - set(NETWORKS)) + sorted(set(args.providers) - set(PROVIDERS))
    if unknown:
        raise UserError(f"unknown model or provider: {', '.join(unknown)}")
    if min((args.batch or ()) + args.channels + args.spatial) < 1 or args.seconds <= 0:
        raise UserError("--batch, --channels and --spatial must be positive, --seconds > 0")
    options = BenchOptions(
        args.model,
        args.providers,
        args.batch,
        args.channels,
        args.spatial,
        args.seconds,
        args.threads or available_cpus(),
        progress=not args.no_progress,
        profile=args.profile,
        int8=args.int8,
        fp16=args.fp16,
    )
    report = run(options)
    print(table(report))
    _write(args.json, json.dumps(report, indent=2))
    return 0


def _add_bench_train(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench-train",
        help="time LayerNorm2d's training forward + backward, and whole training steps",
        description="PyTorch only. For each shape and dtype: ln2d's LayerNorm2d on NCHW and on "
        "channels_last input beside the formula written out, timm's permute style, "
        "channels_last F.layer_norm and torch.compile of the formula: forward + backward "
        "time and the bytes kept for backward (and peak memory on CUDA). Then a whole "
        "training step of SimpleLN_CNN (64x64, batch 32) and the ConvNeXt-atto-like network "
        "(224x224, batch 8) with LayerNorm2d, BatchNorm and no norm, in both layouts. Side by "
        "side, shuffled, medians, an A/A control. Prints markdown tables; --json writes all.",
    )
    bench.add_argument(
        "--shapes",
        type=_shapes,
        default=DEFAULT_TRAIN_SHAPES,
        help="NxCxHxW list (default: 32x96x56x56,8x256x28x28,64x64x32x32)",
    )
    bench.add_argument("--dtypes", type=_names, default=("fp32", "bf16"), help="fp32,bf16")
    bench.add_argument(
        "--networks",
        type=_names,
        default=("simple", "convnext-atto"),
        help="whole-step networks: simple,convnext-atto, or '' for none",
    )
    bench.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA if any")
    bench.add_argument("--seconds", type=float, default=0.5, help="time per variant and group")
    bench.add_argument(
        "--threads", type=int, default=0, help="intra-op threads (0 = the CPU quota's cores)"
    )
    bench.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (a compile per group)"
    )
    bench.add_argument("--json", type=Path, help="write the results as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(run=run_bench_train, extra="export")


def run_bench_train(args: argparse.Namespace) -> int:
    from ln2d.cpu_quota import available_cpus
    from ln2d.export.bench_train import DTYPES, STEP_NETWORKS, TrainBenchOptions, run, table
    from ln2d.training import pick_device

    unknown = sorted(set(args.dtypes) - set(DTYPES))
    unknown += sorted(set(args.networks) - set(STEP_NETWORKS))
    if unknown:
        raise UserError(f"unknown dtype or network: {', '.join(unknown)}")
    if args.seconds <= 0 or args.threads < 0:
        raise UserError("--seconds must be > 0 and --threads >= 0")
    options = TrainBenchOptions(
        args.shapes,
        args.dtypes,
        args.networks,
        pick_device(args.device).type,
        args.seconds,
        args.threads or available_cpus(),
        compile=not args.no_compile,
        progress=not args.no_progress,
    )
    report = run(options)
    print(table(report))
    _write(args.json, json.dumps(report, indent=2))
    return 0


def _add_bench_fuse(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench-fuse",
        help="time ln2d fuse and measure its peak memory, on your models or a generated one",
        description="Run ln2d fuse on each MODEL.onnx --repeats times, each run a fresh "
        "process, alternating between models: median seconds, peak resident memory (the "
        "kernel's count for that process) against the size of the model's weights, and an "
        "A/A control (odd against even runs). --generate GB first writes a ConvNeXt-like "
        "model with LayerNorm2d sites of that size, weights as external data, into a "
        "temporary folder (past 2 GB: the size protobuf cannot hold inline).",
    )
    bench.add_argument("models", type=Path, nargs="*", metavar="MODEL.onnx")
    bench.add_argument("--generate", type=float, metavar="GB", help="also a generated model")
    bench.add_argument("--repeats", type=int, default=3, help="runs per model (default 3)")
    bench.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET, help=TARGET_HELP)
    bench.add_argument("--json", type=Path, help="write the results as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(run=run_bench_fuse, extra="export")


def run_bench_fuse(args: argparse.Namespace) -> int:
    from ln2d.export.bench_fuse import run, table
    from ln2d.export.large_model import write_model
    from ln2d.export.onnx_io import read_graph

    if args.repeats < 1 or (args.generate is not None and args.generate <= 0):
        raise UserError("--repeats must be >= 1 and --generate > 0")
    if not args.models and args.generate is None:
        raise UserError("give MODEL.onnx files, --generate GB, or both")
    for model in args.models:
        read_graph(model)  # one readable line for a missing or malformed file, before any run
    with tempfile.TemporaryDirectory(prefix="ln2d-generated-") as folder:
        models = list(args.models)
        if args.generate is not None:
            models.append(Path(folder) / f"wide_convnext_{args.generate:g}gb.onnx")
            write_model(models[-1], args.generate)
        rows = run(models, args.repeats, ("--target", args.target), not args.no_progress)
    print(table(rows))
    _write(args.json, json.dumps(rows, indent=2))
    return 0


def _shapes(text: str) -> tuple[tuple[int, ...], ...]:
    try:
        shapes = tuple(tuple(int(v) for v in s.split("x")) for s in text.split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxCxHxW,..., got {text!r}") from None
    if not shapes or any(len(s) != 4 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected positive NxCxHxW,..., got {text!r}")
    return shapes


def _add_triton_repo(commands: argparse._SubParsersAction) -> None:
    triton = commands.add_parser(
        "triton-repo",
        help="write a Triton Inference Server model repository for an exported model",
        description="Write DIR/<name>/config.pbtxt (onnxruntime_onnx, dynamic batching with a "
        "bounded queue, dims from the model, label_filename), DIR/<name>/labels.txt and "
        "DIR/<name>/VERSION/model.onnx. <name> is the model's ln2d.name metadata unless "
        "--name. The same folder serves with ln2d serve DIR; writing --version 2 beside version "
        "1 is how a new version is added.",
    )
    triton.add_argument("model", type=Path, metavar="MODEL.onnx")
    triton.add_argument("repository", type=Path, metavar="DIR")
    triton.add_argument("--name", help="Triton model name (default: the model's ln2d.name)")
    triton.add_argument(
        "--version", type=int, default=1, help="the version folder to write (default: 1)"
    )
    # Defaults (None here) come from triton_repo.Batching: the same as ln2d serve's.
    triton.add_argument("--max-batch", type=int, help="max_batch_size (default: 32)")
    triton.add_argument(
        "--max-delay-ms", type=float, help="dynamic batcher's wait for more requests (default: 2)"
    )
    triton.add_argument(
        "--max-queue", type=int, help="requests waiting before Triton rejects (default: 64)"
    )
    triton.add_argument("--timeout-s", type=float, help="queue timeout per request (default: 10)")
    triton.set_defaults(run=run_triton_repo, extra="export")


def run_triton_repo(args: argparse.Namespace) -> int:
    from ln2d.export.triton_repo import Batching, write_repository

    flags = ("max_batch", "max_delay_ms", "max_queue", "timeout_s")
    batching = Batching(**{f: getattr(args, f) for f in flags if getattr(args, f) is not None})
    if min(batching.max_batch, batching.max_queue) < 1 or batching.max_delay_ms < 0:
        raise UserError("--max-batch and --max-queue must be >= 1, --max-delay-ms >= 0")
    if args.version < 1:
        raise UserError("--version must be >= 1")
    target = write_repository(args.model, args.repository, args.name, batching, args.version)
    print(f"wrote {target}/ (config.pbtxt, labels.txt, {args.version}/model.onnx)")
    print(f"  tritonserver --model-repository {args.repository}")
    return 0


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _write(path: Path | None, text: str) -> None:
    if path is not None:
        with writing(path):
            path.write_text(text)
