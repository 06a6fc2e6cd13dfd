"""``ln2d bench-train``: what LayerNorm2d costs in training, beside the other ways to write it.

Two parts, each timed side by side (``timing.interleaved``: a fresh random order every round,
medians) with an A/A control, ln2d's layer or network built a second time:

1. the layer alone, forward + backward (``torch.autograd.grad``, so no gradient accumulation is
   timed), at each shape and dtype, every variant with its own input layout, plus the bytes
   autograd keeps for backward as a multiple of the input's and, on CUDA, the peak memory;
2. a whole training step (forward, cross-entropy, backward, SGD) of SimpleLN_CNN at 64x64 and
   of the ConvNeXt-atto-like bench network at 224x224, each with LayerNorm2d, BatchNorm and no
   norm, in both layouts: what the norm costs in a real step.
"""

from __future__ import annotations

import copy
import functools
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ln2d.cpu_quota import available_cpus
from ln2d.export import timing
from ln2d.export.bench import synchronised
from ln2d.export.bench_models import NETWORKS, build, with_norm
from ln2d.functional import layer_norm_2d, layer_norm_2d_formula
from ln2d.layers import LayerNorm2d

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DEFAULT_SHAPES = ((32, 96, 56, 56), (8, 256, 28, 28), (64, 64, 32, 32))
LN2D, CONTROL = "ln2d", "ln2d" + timing.AA_SUFFIX

NormFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainBenchOptions:
    shapes: tuple[tuple[int, int, int, int], ...] = DEFAULT_SHAPES
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    networks: tuple[str, ...] = ("simple", "convnext-atto")
    device: str = "cpu"
    seconds: float = 0.5  # per variant and group
    threads: int = 1
    compile: bool = True  # also torch.compile of the formula (a compile per shape and dtype)
    progress: bool = True


@dataclass(frozen=True)
class Network:
    """A whole-network training step: the bench network at its input size and batch."""

    name: str
    bench_network: str  # a name in bench_models.NETWORKS
    shape: tuple[int, int, int, int]  # input (N, C, H, W)
    classes: int


STEP_NETWORKS = {
    # The README's model, widths 32/64/128, on 64x64 RGB at batch 32.
    "simple": Network("simple", "simple", (32, 3, 64, 64), 10),
    "convnext-atto": Network("convnext-atto", "convnext-atto", (8, 3, 224, 224), 1000),
}
STEP_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "layernorm2d": LayerNorm2d,
    "batchnorm": nn.BatchNorm2d,
    "none": lambda channels: nn.Identity(),
}


def run(options: TrainBenchOptions) -> dict:
    torch.set_num_threads(options.threads)
    layer = [
        _layer_group(shape, dtype, options)
        for shape, dtype in tqdm(
            [(s, d) for s in options.shapes for d in options.dtypes],
            desc="layer",
            disable=not options.progress,
        )
    ]
    networks = [
        _network_group(STEP_NETWORKS[name], options)
        for name in tqdm(options.networks, desc="networks", disable=not options.progress)
    ]
    return {
        "date": date.today().isoformat(),
        "machine": _machine(options),
        "options": asdict(options),
        "layer": layer,
        "networks": networks,
    }


# ---- the layer alone ----


def _timm_style(x, weight, bias, eps=1e-6):
    """timm's LayerNorm2d: permute to NHWC, F.layer_norm, permute back."""
    nhwc = x.permute(0, 2, 3, 1)
    return F.layer_norm(nhwc, nhwc.shape[-1:], weight, bias, eps).permute(0, 3, 1, 2)


def _layer_variants(options: TrainBenchOptions) -> dict:
    """name -> (input layout, function of (x, weight, bias))."""
    ln2d = functools.partial(layer_norm_2d, eps=1e-6)
    variants = {
        LN2D: ("nchw", ln2d),
        CONTROL: ("nchw", ln2d),
        "ln2d channels_last": ("channels_last", ln2d),
        "formula": ("nchw", functools.partial(layer_norm_2d_formula, eps=1e-6)),
        "timm permute": ("nchw", _timm_style),
        "F.layer_norm channels_last": ("channels_last", _timm_style),
    }
    if options.compile:
        compiled = torch.compile(layer_norm_2d_formula, fullgraph=True, dynamic=False)
        variants["compiled formula"] = ("nchw", lambda x, w, b: compiled(x, w, b, 1e-6))
    return variants


def _layer_group(shape, dtype_name: str, options: TrainBenchOptions) -> dict:
    device, dtype = torch.device(options.device), DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    base = torch.randn(shape, generator=g).to(device, dtype)
    dy = torch.randn(shape, generator=g).to(device, dtype)
    # F.layer_norm takes fp32 parameters with low-precision input on the CPU only.
    param_dtype = torch.float32 if device.type == "cpu" else dtype
    weight = torch.empty(shape[1]).uniform_(0.5, 1.5, generator=g).to(device, param_dtype)
    bias = torch.empty(shape[1]).uniform_(-0.5, 0.5, generator=g).to(device, param_dtype)
    params = [weight.requires_grad_(), bias.requires_grad_()]
    variants = _layer_variants(options)
    runners, saved, peak = {}, {}, {}
    for name, (layout, function) in variants.items():
        x = base.contiguous(memory_format=LAYOUTS[layout]).requires_grad_()
        grad = dy.contiguous(memory_format=LAYOUTS[layout])
        run = _fwd_bwd(function, x, params, grad)
        run()  # compiles, where it does, before anything is measured
        saved[name] = saved_bytes(function, x, params) / (x.numel() * x.element_size())
        if device.type == "cuda":
            peak[name] = _peak_mb(run)
        runners[name] = run
    medians = timing.interleaved(runners, options.seconds)
    return {
        "shape": list(shape),
        "dtype": dtype_name,
        "layouts": {name: layout for name, (layout, _) in variants.items()},
        "median_ms": medians,
        "saved_vs_input": saved,
        "peak_mb": peak,
        "aa_ratio": timing.aa_ratio(medians, LN2D),
    }


def _fwd_bwd(function: NormFunction, x, params, dy) -> timing.Runner:
    inputs = [x, *params]

    def run():
        torch.autograd.grad(function(x, *params), inputs, dy)

    return synchronised(run, x.device.type)


def saved_bytes(function: NormFunction, x, params) -> int:
    """Bytes autograd keeps for backward: each saved tensor's storage, counted once."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = function(x, *params)
    del y
    return sum(storages.values())


def _peak_mb(run: timing.Runner) -> float:
    """CUDA memory at the peak of one forward + backward, above what was allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# ---- whole training steps ----


def _network_group(network: Network, options: TrainBenchOptions) -> dict:
    device = torch.device(options.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(network.shape, generator=g)
    targets = torch.randint(0, network.classes, (network.shape[0],), generator=g).to(device)
    base = build(NETWORKS[network.bench_network], network.shape[1]).train()
    runners = {}
    for layout, fmt in LAYOUTS.items():
        for norm, make in STEP_NORMS.items():
            for name in _step_names(norm, layout):
                model = with_norm(copy.deepcopy(base), make).to(device, memory_format=fmt)
                batch = x.to(device).contiguous(memory_format=fmt)
                runners[name] = _training_step(model, batch, targets)
    medians = timing.interleaved(runners, options.seconds)
    return {
        "network": network.name,
        "input": list(network.shape),
        "median_ms": medians,
        "aa_ratio": timing.aa_ratio(medians, "layernorm2d nchw"),
    }


def _step_names(norm: str, layout: str) -> list[str]:
    name = f"{norm} {layout}"
    control = norm == "layernorm2d" and layout == "nchw"
    return [name, name + timing.AA_SUFFIX] if control else [name]


def _training_step(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> timing.Runner:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        loss = F.cross_entropy(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return synchronised(step, x.device.type)


def _machine(options: TrainBenchOptions) -> dict:
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": available_cpus(),
        "threads": options.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if options.device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name()
    return machine


# ---- the report ----


def summary(report: dict) -> dict:
    """The goals' ratios: ln2d on channels_last against F.layer_norm on channels_last, ln2d on
    NCHW against timm's permute and against channels_last F.layer_norm, per layer group; the
    LayerNorm2d step against the BatchNorm step, per network and layout."""
    layer = []
    for group in report["layer"]:
        ms = group["median_ms"]
        layer.append(
            {
                "shape": group["shape"],
                "dtype": group["dtype"],
                "channels_last_vs_f_layer_norm": ms["F.layer_norm channels_last"]
                / ms["ln2d channels_last"],
                "nchw_vs_timm": ms["timm permute"] / ms[LN2D],
                "nchw_vs_f_layer_norm_channels_last": ms["F.layer_norm channels_last"] / ms[LN2D],
                "saved_vs_input": max(
                    group["saved_vs_input"][LN2D], group["saved_vs_input"]["ln2d channels_last"]
                ),
                "noisy": timing.noisy(group["aa_ratio"]),
            }
        )
    networks = []
    for group in report["networks"]:
        ms = group["median_ms"]
        for layout in LAYOUTS:
            networks.append(
                {
                    "network": group["network"],
                    "layout": layout,
                    "layernorm2d_vs_batchnorm": ms[f"layernorm2d {layout}"]
                    / ms[f"batchnorm {layout}"],
                    "norm_cost_ms": ms[f"layernorm2d {layout}"] - ms[f"none {layout}"],
                    "batchnorm_cost_ms": ms[f"batchnorm {layout}"] - ms[f"none {layout}"],
                }
            )
    return {"layer": layer, "networks": networks}


def table(report: dict) -> str:
    machine = report["machine"]
    device = report["options"]["device"]
    lines = [
        f"ln2d bench-train, {report['date']}: {machine['cpu']} ({device}), "
        f"{machine['threads']} threads, torch {machine['torch']}. Forward + backward, median "
        f"ms (ln2d's NCHW time over the variant's: above 1 the variant is slower); saved = "
        f"bytes kept for backward / the input's; A/A is ln2d over its twin, ! when further "
        f"than {timing.AA_LIMIT:.0%} from 1.",
    ]
    for group in report["layer"]:
        ms, base = group["median_ms"], group["median_ms"][LN2D]
        shape = "x".join(map(str, group["shape"]))
        head = ["variant", "input", "ms", "ln2d / variant", "saved"]
        if group["peak_mb"]:
            head.append("peak MB")
        lines += _heading(f"{shape} {group['dtype']}", group["aa_ratio"], head)
        for name, value in ms.items():
            row = [name, group["layouts"][name], f"{value:.3f}", f"{base / value:.2f}"]
            row.append(f"{group['saved_vs_input'][name]:.2f}x")
            if group["peak_mb"]:
                row.append(f"{group['peak_mb'][name]:.1f}")
            lines.append(_row(row))
    for group in report["networks"]:
        ms = group["median_ms"]
        shape = "x".join(map(str, group["input"]))
        head = ["norm", "ms / step", "vs batchnorm, same layout"]
        lines += _heading(f"Training step, {group['network']} {shape}", group["aa_ratio"], head)
        for name, value in ms.items():
            layout = name.split()[1]
            lines.append(_row([name, f"{value:.2f}", f"{value / ms[f'batchnorm {layout}']:.2f}x"]))
    lines += ["", "### Summary", ""]
    digest = summary(report)
    for entry in digest["layer"]:
        shape = "x".join(map(str, entry["shape"]))
        lines.append(
            f"- {shape} {entry['dtype']}: channels_last ln2d "
            f"{entry['channels_last_vs_f_layer_norm']:.2f}x F.layer_norm's speed; "
            f"NCHW ln2d {entry['nchw_vs_timm']:.2f}x timm's, "
            f"{entry['nchw_vs_f_layer_norm_channels_last']:.2f}x channels_last F.layer_norm's; "
            f"saved {entry['saved_vs_input']:.3f}x the input" + " (noisy)" * entry["noisy"]
        )
    for entry in digest["networks"]:
        lines.append(
            f"- {entry['network']} {entry['layout']}: LayerNorm2d step "
            f"{entry['layernorm2d_vs_batchnorm']:.2f}x BatchNorm's; the norm costs "
            f"{entry['norm_cost_ms']:.1f} ms a step (BatchNorm {entry['batchnorm_cost_ms']:.1f})"
        )
    return "\n".join(lines)


def _heading(title: str, aa_ratio: float, head: list[str]) -> list[str]:
    """A group's title with its A/A control, and its table's head."""
    aa = f"A/A {aa_ratio:.3f}" + "!" * timing.noisy(aa_ratio)
    return ["", f"### {title} ({aa})", "", _row(head), _row(["---"] * len(head))]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
