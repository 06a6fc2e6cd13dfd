"""``ln2d bench``: every fused form against the decomposed graph, no norm and PyTorch eager.

For each network and grid point, the variants run interleaved (A B C A B C ...), so that a
noisy neighbour slows all of them alike, and each gets its median. Every ONNX Runtime session
runs with thread spinning off: with it on, the idle sessions' spinning threads steal the cores
from the one being timed.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import date

import numpy as np
import onnx
import torch
from tqdm import tqdm

from export.bench_models import NETWORKS, Network, build, without_norms
from export.fusion import fuse_model
from export.fusion.forms import FORMS
from export.fusion.targets import DEFAULT_TARGET, TARGETS
from export.onnx_export import DEFAULT_OPSET, module_to_onnx
from export.parity import PROVIDERS
from ln2d.errors import UserError
from serve.cpu_quota import available_cpus


@dataclass(frozen=True)
class BenchOptions:
    networks: tuple[str, ...]
    providers: tuple[str, ...]
    batches: tuple[int, ...]
    channels: tuple[int, ...]
    spatial: tuple[int, ...]
    seconds: float  # per variant and grid point
    threads: int
    progress: bool = True


Runner = Callable[[], object]


def run(options: BenchOptions) -> dict:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    available = set(ort.get_available_providers())
    providers = [p for p in options.providers if PROVIDERS[p] in available]
    skipped = {p: "provider not available" for p in options.providers if p not in providers}
    torch.set_num_threads(options.threads)
    points, networks = list(_grid(options)), list(_networks(options))
    results = []
    total = len(networks) * len(providers) * len(points)
    bar = tqdm(total=total, desc="bench", disable=not options.progress)
    for network, channels in networks:
        graphs, targets = _graphs(network, channels)
        module = build(network, channels)
        for provider in providers:
            sessions = {name: _session(ort, g, provider, options.threads) for name, g in graphs}
            for batch, size in points:
                shape = (batch, channels, size, size)
                if size < network.min_size:
                    bar.update()
                    continue
                bar.set_postfix_str(f"{network.name} {provider} {shape}")
                point = _measure(network, provider, shape, sessions, module, options)
                results.append({**point, "targets": targets})
                bar.update()
    bar.close()
    return {
        "date": date.today().isoformat(),
        "machine": _machine(options.threads),
        "options": asdict(options),
        "skipped_providers": skipped,
        "results": results,
    }


def _grid(options: BenchOptions) -> Iterator[tuple[int, int]]:
    for batch in options.batches:
        for size in options.spatial:
            yield batch, size


def _networks(options: BenchOptions) -> Iterator[tuple[Network, int]]:
    for name in options.networks:
        network = NETWORKS[name]
        for channels in network.channels or options.channels:
            yield network, channels


def _graphs(network: Network, channels: int) -> tuple[list[tuple[str, onnx.ModelProto]], dict]:
    """The decomposed and no-norm exports, every form that applies to every site, and, per
    target, the variant holding its choice (a form's own variant when it picks one form)."""
    example = torch.zeros(2, channels, max(8, network.min_size), max(8, network.min_size))
    decomposed = module_to_onnx(build(network, channels), example, DEFAULT_OPSET)
    bare = module_to_onnx(without_norms(build(network, channels)), example, DEFAULT_OPSET)
    graphs = [("decomposed", decomposed), ("no-norm", bare)]
    by_target = {target: fuse_model(decomposed, target) for target in TARGETS}
    sites = by_target[DEFAULT_TARGET][1].fused
    if not sites:
        raise UserError(f"{network.name}: no LayerNorm2d site fused")
    for form in FORMS:
        if form != "centred_conv" or all(site.centrable for site in sites):
            graphs.append((form, fuse_model(decomposed, lambda _, form=form: (form, "bench"))[0]))
    targets = {}
    for target, (fused, report) in by_target.items():
        forms = {site.form for site in report.fused}
        (form,) = forms if len(forms) == 1 else (f"target:{target}",)
        if form not in dict(graphs):
            graphs.append((form, fused))
        targets[target] = form
    return graphs, targets


def _session(ort, model: onnx.ModelProto, provider: str, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=[PROVIDERS[provider]])


def _measure(network, provider, shape, sessions, module, options) -> dict:
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    runners: dict[str, Runner] = {
        name: (lambda s=session: s.run(None, {"input": x})) for name, session in sessions.items()
    }
    if provider == "cpu":
        tensor = torch.from_numpy(x)
        runners["eager"] = lambda: _eager(module, tensor)
        if network.name == "ln2d":
            copy = torch.empty_like(tensor)
            runners["copy"] = lambda: copy.copy_(tensor)
    times = _interleaved(runners, options.seconds)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    point = {
        "network": network.name,
        "provider": provider,
        "shape": list(shape),
        "median_ms": medians,
        "runs": len(next(iter(times.values()))),
    }
    if network.name == "ln2d":
        moved = 2 * x.nbytes  # read x once, write y once: the least any LN2d must move
        point["gb_per_s"] = {name: moved / (ms * 1e6) for name, ms in medians.items()}
    return point


def _eager(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module(x)


def _interleaved(runners: dict[str, Runner], seconds: float) -> dict[str, list[float]]:
    """Time each runner once per round, round after round, until the budget is spent."""
    for runner in runners.values():  # warm-up: allocations, kernel selection
        runner()
        runner()
    times: dict[str, list[float]] = {name: [] for name in runners}
    deadline = time.perf_counter() + seconds * len(runners)
    rounds = 0
    while rounds < 5 or (time.perf_counter() < deadline and rounds < 1000):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner()
            times[name].append(time.perf_counter() - started)
        rounds += 1
    return times


def _machine(threads: int) -> dict:
    import onnxruntime as ort

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": available_cpus(),
        "threads": threads,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def summary(report: dict) -> dict:
    """The goals, per network on each provider, for the variant the cpu target picks."""
    out = {}
    for (network, provider), points in _groups(report["results"]).items():
        speedups = [p["median_ms"]["decomposed"] / _target_ms(p) for p in points]
        entry = {
            "target_form": sorted({p["targets"]["cpu"] for p in points}),
            "geomean_speedup_vs_decomposed": statistics.geometric_mean(speedups),
            "points_slower_than_decomposed": sum(s < 1 for s in speedups),
            "points": len(points),
        }
        if all("eager" in p["median_ms"] for p in points):
            entry["points_slower_than_eager"] = sum(
                _target_ms(p) > p["median_ms"]["eager"] for p in points
            )
        entry["norm_overhead_ratio"] = {
            "x".join(map(str, p["shape"])): _overhead(p, p["targets"]["cpu"])
            / _overhead(p, "decomposed")
            for p in points
        }
        out[f"{network} on {provider}"] = entry
    return out


def table(report: dict) -> str:
    lines = [
        f"ln2d bench, {report['date']}: {report['machine']['cpu']}, "
        f"{report['machine']['threads']} threads, onnxruntime {report['machine']['onnxruntime']}, "
        f"torch {report['machine']['torch']}. Median ms (speed-up over decomposed)."
    ]
    lines += [f"{p}: skipped, {why}" for p, why in report["skipped_providers"].items()]
    for (network, provider), points in _groups(report["results"]).items():
        variants = list(points[0]["median_ms"])
        head = ["shape", *variants, "cpu target"]
        if network == "ln2d":
            head.append("GB/s target / copy")
        lines += ["", f"### {network} on {provider}", "", _row(head), _row(["---"] * len(head))]
        for p in points:
            ms, base = p["median_ms"], p["median_ms"]["decomposed"]
            row = ["x".join(map(str, p["shape"]))]
            row += [f"{ms[v]:.3f} ({base / ms[v]:.2f}x)" for v in variants]
            row.append(p["targets"]["cpu"])
            if network == "ln2d":
                gbs = p["gb_per_s"]
                row.append(f"{gbs[p['targets']['cpu']]:.1f} / {gbs.get('copy', 0):.1f}")
            lines.append(_row(row))
    lines += ["", "### Summary (cpu target)", ""]
    for name, entry in summary(report).items():
        overheads = ", ".join(f"{k}: {v:.2f}" for k, v in entry["norm_overhead_ratio"].items())
        eager = entry.get("points_slower_than_eager")
        lines.append(
            f"- {name}: {'/'.join(entry['target_form'])}, geomean "
            f"{entry['geomean_speedup_vs_decomposed']:.2f}x over decomposed, slower than "
            f"decomposed at {entry['points_slower_than_decomposed']}/{entry['points']} points"
            + (f", slower than eager at {eager}" if eager is not None else "")
            + f"; norm overhead vs decomposed's: {overheads}"
        )
    return "\n".join(lines)


def _groups(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for point in results:
        groups.setdefault((point["network"], point["provider"]), []).append(point)
    return groups


def _target_ms(point: dict) -> float:
    return point["median_ms"][point["targets"]["cpu"]]


def _overhead(point: dict, variant: str) -> float:
    """What the norm costs in this variant: its time minus the same network without norms."""
    return point["median_ms"][variant] - point["median_ms"]["no-norm"]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
