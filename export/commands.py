"""``ln2d export``, ``ln2d fuse`` and ``ln2d parity``. Heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ln2d.commands import add_checkpoint_arguments, int_list, load_from_args
from ln2d.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX with every LayerNorm2d fused",
        description="Export CKPT to ONNX (dynamic batch, height, width) with serving metadata; "
        "every LayerNorm2d is pattern-matched and replaced by a fused subgraph.",
    )
    add_checkpoint_arguments(export)
    export.add_argument("-o", "--output", type=Path, required=True, help="model.onnx to write")
    export.add_argument("--opset", type=int, help="ONNX opset (default: 23; at least 18)")
    export.add_argument("--no-fuse", action="store_true", help="keep the decomposed graph")
    export.add_argument("--report", type=Path, help="write the fusion report as JSON")
    export.set_defaults(run=run_export, extra="export,cpu")

    fuse = commands.add_parser(
        "fuse",
        help="fuse every per-pixel channel LayerNorm in any ONNX model",
        description="Find every per-pixel channel LayerNorm in IN.onnx, whichever way it is "
        "written, and replace it with standard ONNX ops; report every candidate site.",
    )
    fuse.add_argument("input", type=Path, metavar="IN.onnx")
    fuse.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.onnx")
    fuse.add_argument("--report", type=Path, help="write the fusion report as JSON")
    fuse.set_defaults(run=run_fuse, extra="export,cpu")

    parity = commands.add_parser(
        "parity",
        help="compare PyTorch against ONNX Runtime (CPU, CUDA) and fused against unfused",
        description="Exit code 0 only when every requested comparison passed.",
    )
    add_checkpoint_arguments(parity)
    parity.add_argument("model", type=Path, metavar="MODEL.onnx")
    parity.add_argument(
        "--providers",
        default="auto",
        help="comma list of cpu,cuda; 'auto' = cpu, plus cuda when available (default)",
    )
    parity.add_argument(
        "--data", default="digits", help="digits (validation split), random, or an image DIR"
    )
    parity.add_argument("--atol", type=float, help="absolute tolerance (default: by dtype)")
    parity.add_argument("--rtol", type=float, help="relative tolerance (default: by dtype)")
    parity.add_argument("--json", type=Path, help="write the parity report as JSON")
    parity.add_argument(
        "--bisect", action="store_true", help="on failure, name the first diverging LayerNorm2d"
    )
    parity.set_defaults(run=run_parity, extra="export,cpu")

    bench_serve = commands.add_parser(
        "bench-serve",
        help="load-test a real ln2d serve process beside raw ONNX Runtime",
        description="Start ln2d serve for MODEL.onnx on a free loopback port and measure "
        "/v1/classify (224x224 PNG photo) and v2 binary infer at each concurrency, an overload "
        "run, and memory over a soak run. Prints a markdown table; --json writes everything.",
    )
    bench_serve.add_argument("model", type=Path, metavar="MODEL.onnx")
    bench_serve.add_argument("--concurrency", type=int_list, default=(1, 8, 32), help="e.g. 1,8,32")
    bench_serve.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    bench_serve.add_argument("--overload", type=int, default=256, help="overload concurrency")
    bench_serve.add_argument("--soak", type=int, default=10_000, help="soak run requests")
    bench_serve.add_argument(
        "--server-args", default="", help="extra ln2d serve flags, e.g. '--max-batch 16'"
    )
    bench_serve.add_argument("--json", type=Path, help="write the results as JSON")
    bench_serve.set_defaults(run=run_bench_serve, extra="export,serve,cpu")


def run_export(args: argparse.Namespace) -> int:
    from export.onnx_export import DEFAULT_OPSET, export_checkpoint
    from export.onnx_io import save_model

    checkpoint = load_from_args(args)
    proto, report = export_checkpoint(checkpoint, args.opset or DEFAULT_OPSET, not args.no_fuse)
    save_model(proto, args.output)
    if report is not None:
        print(report.table())
        _write(args.report, report.to_json())
    print(f"wrote {args.output} (opset {args.opset or DEFAULT_OPSET})")
    return 0


def run_fuse(args: argparse.Namespace) -> int:
    from export.fusion import fuse_model
    from export.onnx_io import load_model, save_model

    model = load_model(args.input)
    fused, report = fuse_model(model)
    save_model(fused, args.output)
    print(report.table())
    _write(args.report, report.to_json())
    print(f"wrote {args.output}")
    return 0


def run_parity(args: argparse.Namespace) -> int:
    from export.parity import ParityOptions, run_parity_checks

    checkpoint = load_from_args(args)
    options = ParityOptions(
        providers=args.providers,
        data=args.data,
        atol=args.atol,
        rtol=args.rtol,
        bisect=args.bisect,
    )
    report = run_parity_checks(checkpoint, args.model, options)
    print(report.table())
    _write(args.json, report.to_json())
    return 0 if report.passed else 1


def _write(path: Path | None, text: str) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc


def run_bench_serve(args: argparse.Namespace) -> int:
    import shlex

    from export.bench_serve import BenchOptions, run, table

    if not args.model.is_file():
        raise UserError(f"model file not found: {args.model}")
    options = BenchOptions(
        args.model,
        args.concurrency,
        args.seconds,
        args.overload,
        args.soak,
        tuple(shlex.split(args.server_args)),
    )
    report = run(options)
    print(table(report))
    _write(args.json, json.dumps(report, indent=2))
    return 0
