"""``ln2d bench``: every fused form against the decomposed graph, no norm and PyTorch eager.

Three phases, so that nothing measured pays for something else:

1. graphs: each network is exported once (``module_to_onnx``, dynamic shapes), and again with
   its norms replaced by identities (no-norm); every form that applies to every site, each
   target's pick and, for networks marked ``tune``, what ``ln2d fuse --tune`` picks (itself
   a torch-free subprocess) are written to a temporary folder.
2. ONNX Runtime: a subprocess that never imports torch times every variant of a network side
   by side (``ln2d.export.timing``: spinning off, a new random order every round) and carries an
   A/A control, the decomposed graph loaded a second time.
3. PyTorch eager (and, for a bare norm, a tensor copy), in this process, after all of it.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np
import onnx
import torch
from tqdm import tqdm

from ln2d import native
from ln2d.cpu_quota import available_cpus
from ln2d.errors import UserError
from ln2d.export import timing
from ln2d.export.bench_models import NETWORKS, Network, build, without_norms
from ln2d.export.fusion import lower, match, verify
from ln2d.export.fusion.forms import FORMS, lowers
from ln2d.export.fusion.targets import TARGETS, usable
from ln2d.export.onnx_export import default_opset, module_to_onnx
from ln2d.runtime import available_providers

DECOMPOSED, CONTROL = "decomposed", "decomposed" + timing.AA_SUFFIX
FP16 = "fp16:"  # the prefix of a variant's fp16 twin (export --precision fp16), timed on CUDA
DEFAULT_BATCHES = (1, 8, 32)


@dataclass(frozen=True)
class BenchOptions:
    networks: tuple[str, ...]
    providers: tuple[str, ...]
    batches: tuple[int, ...] | None  # None: each network's own, else DEFAULT_BATCHES
    channels: tuple[int, ...]
    spatial: tuple[int, ...]
    seconds: float  # per variant and grid point
    threads: int
    progress: bool = True
    profile: bool = False  # ONNX Runtime's per-op profile of decomposed, no-norm and picks
    int8: bool = False  # also an INT8 variant, as ln2d quantize makes it
    fp16: bool = False  # also fp16 twins of the fused forms (export --precision fp16), CUDA only

    @property
    def opset(self) -> int:
        """The lowest of the opsets ``ln2d export`` writes for the providers' targets: every
        provider then runs the nodes it has kernels for (CUDA has none for MaxPool-22)."""
        return min(default_opset(provider) for provider in self.providers)


def run(options: BenchOptions) -> dict:
    providers = [p for p in options.providers if p in available_providers()]
    skipped = {p: "provider not available" for p in options.providers if p not in providers}
    networks = list(_networks(options))
    with tempfile.TemporaryDirectory(prefix="ln2d-bench-") as tmp:
        jobs = []
        for index, (network, channels) in enumerate(
            tqdm(networks, desc="graphs", disable=not options.progress)
        ):
            shapes = _shapes(network, channels, options)
            folder = Path(tmp) / str(index)
            models, targets = _write_graphs(network, channels, shapes, folder, options)
            for provider in providers:
                jobs.append(
                    {
                        "id": len(jobs),
                        "network": network.name,
                        "provider": provider,
                        "models": _for_provider(models, provider),
                        "shapes": shapes,
                        "targets": targets,
                        "profile": _profiled(targets, options.int8) if options.profile else [],
                    }
                )
        timed = _onnxruntime_phase(jobs, options, Path(tmp))
    results = [_point(jobs[t["job"]], t) for t in timed]
    _eager_phase(networks, results, options)
    return {
        "date": date.today().isoformat(),
        "machine": _machine(options.threads),
        "options": asdict(options),
        "opset": options.opset,
        "skipped_providers": skipped,
        "results": results,
    }


def _networks(options: BenchOptions) -> Iterator[tuple[Network, int]]:
    for name in options.networks:
        network = NETWORKS[name]
        for channels in network.channels or options.channels:
            yield network, channels


def _shapes(network: Network, channels: int, options: BenchOptions) -> list[list[int]]:
    return [
        [batch, channels, size, size]
        for batch in options.batches or network.batches or DEFAULT_BATCHES
        for size in network.spatial or options.spatial
        if size >= network.min_size
    ]


def _write_graphs(network, channels, shapes, folder: Path, options) -> tuple[dict, dict]:
    """Write every variant's ONNX file; return {variant: path} and, per target, its variant."""
    folder.mkdir(parents=True)
    size = max(8, network.min_size)
    example = torch.zeros(2, channels, size, size)
    opset = options.opset
    # The network's own smallest input: below it torch 2.11's export fails on the pools
    # (make gpu-check, 2026-12-04), and nothing smaller is ever run.
    decomposed = module_to_onnx(build(network, channels), example, opset, network.min_size)
    bare = module_to_onnx(without_norms(build(network, channels)), example, opset, network.min_size)
    graphs = {DECOMPOSED: decomposed, "no-norm": bare}
    matched = match(decomposed)
    sites = matched.report.fused
    if not sites:
        raise UserError(f"{network.name}: no LayerNorm2d site fused")
    for form in FORMS:
        if all(lowers(form, site) for site in sites):
            graphs[form] = lower(matched, {site.name: form for site in sites})[0]
    targets = {}
    for target in filter(usable, TARGETS):
        fused, report = lower(matched, target)
        verify(decomposed, fused, report)
        forms = {site.form for site in report.fused}
        (variant,) = forms if len(forms) == 1 else (f"target:{target}",)
        graphs.setdefault(variant, fused)
        targets[target] = variant
    if options.int8:
        graphs["int8"] = _int8(decomposed, shapes[0])
    if options.fp16:
        graphs.update(_fp16_twins(graphs))
    paths = {
        name: str(_save(graph, folder / f"{i}.onnx"))
        for i, (name, graph) in enumerate(graphs.items())
    }
    paths[CONTROL] = paths[DECOMPOSED]
    if network.tune:
        paths["tuned"] = _tuned(paths[DECOMPOSED], folder / "tuned.onnx", shapes, options)
        targets["tune"] = "tuned"
    return paths, targets


def _int8(model: onnx.ModelProto, shape: list[int]) -> onnx.ModelProto:
    """``ln2d quantize``'s INT8 model, calibrated on 16 random inputs: the bench's networks
    have random weights, so no data is more real, and speed does not depend on it."""
    from ln2d.export.quantize import QuantizeOptions, quantize_model

    images = np.random.default_rng(0).standard_normal((16, *shape[1:])).astype(np.float32)
    return quantize_model(model, images, QuantizeOptions(progress=False))[0]


def _fp16_twins(graphs: dict[str, onnx.ModelProto]) -> dict[str, onnx.ModelProto]:
    """Each standard-op variant but decomposed as ``ln2d export --precision fp16`` makes it
    (decomposed has no sites to keep in fp32); no-norm's twin measures fp16's norm overhead.
    The native op runs on the CPU only, so graphs with it have no twin."""
    from ln2d.export.fp16 import to_fp16

    return {
        FP16 + name: to_fp16(graph)
        for name, graph in graphs.items()
        if name != DECOMPOSED and all(node.domain != native.DOMAIN for node in graph.graph.node)
    }


def _for_provider(models: dict[str, str], provider: str) -> dict[str, str]:
    """fp16 is for GPUs: ONNX Runtime's CPU provider has few fp16 kernels, so timing it there
    would measure the fallbacks."""
    return {n: path for n, path in models.items() if not n.startswith(FP16) or provider == "cuda"}


def _save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, str(path))
    return str(path)


def _tuned(source: str, out: Path, shapes: list[list[int]], options: BenchOptions) -> str:
    """What ``ln2d fuse --tune`` picks at the grid's shapes, run as a user runs it."""
    command = [sys.executable, "-m", "ln2d", "fuse", source, "-o", str(out), "--tune"]
    command += [f"--threads={options.threads}", "--no-progress"]
    for shape in shapes:
        command += ["--shape", ",".join(map(str, shape))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"ln2d fuse --tune failed: {done.stderr.strip().splitlines()[-1]}")
    return str(out)


def _onnxruntime_phase(jobs: list[dict], options: BenchOptions, folder: Path) -> list[dict]:
    spec, out = folder / "spec.json", folder / "timings.json"
    settings = {"threads": options.threads, "seconds": options.seconds}
    spec.write_text(json.dumps({"jobs": jobs, **settings, "progress": options.progress}))
    done = subprocess.run([sys.executable, "-m", "ln2d.export.bench_worker", str(spec), str(out)])
    if done.returncode != 0:
        raise UserError("the ONNX Runtime timing subprocess failed (its error is above)")
    return json.loads(out.read_text())


def _point(job: dict, timed: dict) -> dict:
    medians = timed["median_ms"]
    point = {
        "network": job["network"],
        "provider": job["provider"],
        "shape": timed["shape"],
        "median_ms": medians,
        "targets": job["targets"],
        "aa_ratio": timing.aa_ratio(medians, DECOMPOSED),
    }
    point["noisy"] = timing.noisy(point["aa_ratio"])
    if "profile_us" in timed:
        point["profile_us"] = timed["profile_us"]
    return point


def _profiled(targets: dict[str, str], int8: bool) -> list[str]:
    picks = [targets[t] for t in ("cpu", "cpu-native", "tune") if t in targets]
    return list(dict.fromkeys([DECOMPOSED, "no-norm", *picks, *(["int8"] if int8 else [])]))


def _eager_phase(networks, results: list[dict], options: BenchOptions) -> None:
    """PyTorch eager (and a copy of x, for a bare norm) on the point's device, added to each
    point of a provider this torch also runs on; with --fp16 on CUDA, eager in fp16 too."""
    torch.set_num_threads(options.threads)
    modules = {(n.name, c): build(n, c) for n, c in networks}
    ours = [p for p in results if _torch_device(p["provider"])]
    for point in tqdm(ours, desc="eager", disable=not options.progress):
        module = modules[(point["network"], point["shape"][1])]
        device = _torch_device(point["provider"])
        point["median_ms"].update(_eager_timings(point, module, device, options))
        if point["network"] == "ln2d":
            moved = 2 * math.prod(point["shape"]) * 4  # read x once, write y once: the least
            point["gb_per_s"] = {
                k: moved / (ms * 1e6)
                for k, ms in point["median_ms"].items()
                if not k.startswith(FP16)  # half the bytes: not comparable with the copy
            }


def _torch_device(provider: str) -> str | None:
    if provider == "cuda":
        return "cuda" if torch.cuda.is_available() else None
    return provider


def _eager_timings(point: dict, module, device: str, options: BenchOptions) -> dict[str, float]:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(point["shape"], np.float32))
    x, module = x.to(device), module.to(device)
    runners = {"eager": _eager(module, x)}
    if point["network"] == "ln2d":
        copy = torch.empty_like(x)
        runners["copy"] = synchronised(lambda: copy.copy_(x), device)
    if options.fp16 and device == "cuda":
        runners[FP16 + "eager"] = _eager(_half_copy(module), x.half())
    return timing.interleaved(runners, options.seconds)


def _half_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).half()


def _eager(module: torch.nn.Module, x: torch.Tensor) -> timing.Runner:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return synchronised(run, x.device.type)


def synchronised(run: timing.Runner, device: str) -> timing.Runner:
    """On CUDA the clock stops when the kernels are done, not when they are queued."""
    if device != "cuda":
        return run
    return lambda: (run(), torch.cuda.synchronize())


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
    """The goals, per network on each provider, for the variant each target picks.

    A point is slower than decomposed only beyond the run's noise: the largest distance of
    the A/A control from 1 over that network's points."""
    out = {}
    for (network, provider), points in _groups(report["results"]).items():
        noise = max(abs(1 - p["aa_ratio"]) for p in points)
        entry = {"aa_noise": noise, "noisy_points": sum(p["noisy"] for p in points)}
        for target in (provider, "tune"):  # the cpu and cuda targets are named for theirs
            if target not in points[0]["targets"]:
                continue
            speedups = [_speedup(p, p["targets"][target]) for p in points]
            entry[target] = {
                "variant": sorted({p["targets"][target] for p in points}),
                "geomean_speedup_vs_decomposed": statistics.geometric_mean(speedups),
                "points_slower_beyond_noise": sum(s < 1 - noise for s in speedups),
                "points": len(points),
                "norm_overhead_ratio": {
                    "x".join(map(str, p["shape"])): _overhead(p, p["targets"][target])
                    / _overhead(p, DECOMPOSED)
                    for p in points
                },
            }
            if all("eager" in p["median_ms"] for p in points):
                entry[target]["points_slower_than_eager"] = sum(
                    p["median_ms"][p["targets"][target]] > p["median_ms"]["eager"] for p in points
                )
        out[f"{network} on {provider}"] = entry
    return out


def table(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"ln2d bench, {report['date']}: {machine['cpu']}, {machine['threads']} threads, "
        f"onnxruntime {machine['onnxruntime']}, torch {machine['torch']}. Median ms "
        f"(speed-up over decomposed); A/A is decomposed over its second session, "
        f"! when further than {timing.AA_LIMIT:.0%} from 1."
    ]
    lines += [f"{p}: skipped, {why}" for p, why in report["skipped_providers"].items()]
    for (network, provider), points in _groups(report["results"]).items():
        variants = [v for v in points[0]["median_ms"] if v != CONTROL]
        target = provider  # the target named for the provider
        head = ["shape", "A/A", *variants, f"{target} target"]
        if network == "ln2d":
            head.append("GB/s target / copy")
        lines += ["", f"### {network} on {provider}", "", _row(head), _row(["---"] * len(head))]
        for p in points:
            ms, base = p["median_ms"], p["median_ms"][DECOMPOSED]
            row = ["x".join(map(str, p["shape"])), f"{p['aa_ratio']:.3f}" + "!" * p["noisy"]]
            row += [f"{ms[v]:.3f} ({base / ms[v]:.2f}x)" for v in variants]
            row.append(p["targets"][target])
            if network == "ln2d" and "gb_per_s" in p:
                gbs = p["gb_per_s"]
                row.append(f"{gbs[p['targets'][target]]:.1f} / {gbs['copy']:.1f}")
            lines.append(_row(row))
    lines += _profile_tables(report["results"])
    lines += ["", "### Summary", ""]
    for name, entry in summary(report).items():
        lines.append(
            f"- {name}: A/A noise {entry['aa_noise']:.1%}, {entry['noisy_points']} noisy point(s)"
        )
        for target in ("cpu", "cuda", "tune"):
            if target in entry:
                lines.append(_summary_line(target, entry[target]))
    return "\n".join(lines)


def _profile_tables(results: list[dict], top: int = 8) -> list[str]:
    """ONNX Runtime's per-op time, the ``top`` op types of each profiled variant."""
    lines = []
    for point in (p for p in results if "profile_us" in p):
        shape = "x".join(map(str, point["shape"]))
        lines += ["", f"Per-op profile, {point['network']} {shape} (µs per run):", ""]
        for variant, ops in point["profile_us"].items():
            cells = ", ".join(f"{op} {us:.0f}" for op, us in list(ops.items())[:top])
            lines.append(f"- {variant} ({sum(ops.values()):.0f} in all): {cells}")
    return lines


def _summary_line(target: str, entry: dict) -> str:
    overheads = ", ".join(f"{k}: {v:.2f}" for k, v in entry["norm_overhead_ratio"].items())
    eager = entry.get("points_slower_than_eager")
    return (
        f"  - {target}: {'/'.join(entry['variant'])}, geomean "
        f"{entry['geomean_speedup_vs_decomposed']:.2f}x over decomposed, slower beyond the "
        f"noise at {entry['points_slower_beyond_noise']}/{entry['points']} points"
        + (f", slower than eager at {eager}" if eager is not None else "")
        + f"; norm overhead vs decomposed's: {overheads}"
    )


def _groups(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for point in results:
        groups.setdefault((point["network"], point["provider"]), []).append(point)
    return groups


def _speedup(point: dict, variant: str) -> float:
    return point["median_ms"][DECOMPOSED] / point["median_ms"][variant]


def _overhead(point: dict, variant: str) -> float:
    """What the norm costs in this variant: its time minus the same network without norms."""
    return point["median_ms"][variant] - point["median_ms"]["no-norm"]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
