"""A second, independent timing of ``ln2d bench-train``'s headline numbers.

Nothing of the bench is reused: every variant runs alone in a fresh Python process, timed by
``torch.utils.benchmark.Timer`` (its own warm-up and blocked autorange, median), forward +
backward through ``Tensor.backward`` with the inputs' gradients reset every run. The processes
alternate, three rounds each. Each process starts with glibc's malloc told to keep what is
freed (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), as the warm heap of a training
run does: otherwise a variant alone in a process pays page faults for fresh memory at every
call, as many as its order of allocations and frees happens to cause (measured here: 460 a
call for one variant, 0 for the same variant after another had run).

- the layer: ln2d's LayerNorm2d on NCHW and on channels_last input, timm's permute style written
  out here, and F.layer_norm on channels_last input, at the three goal shapes, fp32;
- a SimpleLN_CNN training step (64x64, batch 32, SGD) with LayerNorm2d and with BatchNorm.

    python scripts/crosscheck_train.py   # about four minutes on 2 cores
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

SHAPES = ("32x96x56x56", "8x256x28x28", "64x64x32x32")
LAYER_VARIANTS = ("ln2d_nchw", "ln2d_channels_last", "timm_nchw", "f_layer_norm_channels_last")
STEP_VARIANTS = ("step_layernorm2d", "step_batchnorm")

TIMER = """
import sys, torch, torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer
torch.set_num_threads(2)
variant, shape = sys.argv[1], sys.argv[2]
if variant.startswith("step_"):
    from ln2d.model import SimpleLN_CNN
    model = SimpleLN_CNN(3, 10, (32, 64, 128), norm=variant[5:])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
    def run():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
else:
    from ln2d import LayerNorm2d
    n, c, h, w = map(int, shape.split("x"))
    layout = torch.channels_last if variant.endswith("channels_last") else torch.contiguous_format
    x = torch.randn(n, c, h, w).contiguous(memory_format=layout).requires_grad_()
    dy = torch.randn(n, c, h, w).contiguous(memory_format=layout)
    norm = LayerNorm2d(c)
    def timm(t):
        t = t.permute(0, 2, 3, 1)
        return F.layer_norm(t, (c,), norm.weight, norm.bias, 1e-6).permute(0, 3, 1, 2)
    forward = norm if variant.startswith("ln2d") else timm
    def run():
        x.grad = None
        norm.zero_grad(set_to_none=True)
        forward(x).backward(dy)
timer = Timer("run()", globals={"run": run})
print(timer.blocked_autorange(min_run_time=2.0).median * 1e3)
"""


WARM_HEAP = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}


def time_alone(variant: str, shape: str) -> float:
    command = [sys.executable, "-c", TIMER, variant, shape]
    env = {**os.environ, **WARM_HEAP}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return float(done.stdout)


def medians(variants: tuple[str, ...], shape: str, rounds: int = 3) -> dict[str, float]:
    times: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(rounds):
        for variant in variants if round_ % 2 == 0 else reversed(variants):
            times[variant].append(time_alone(variant, shape))
    return {v: statistics.median(t) for v, t in times.items()}


def main() -> None:
    for shape in SHAPES:
        ms = medians(LAYER_VARIANTS, shape)
        print(
            f"{shape} fp32 fwd+bwd ms: "
            + ", ".join(f"{v} {t:.2f}" for v, t in ms.items())
            + f"; NCHW ln2d {ms['timm_nchw'] / ms['ln2d_nchw']:.2f}x timm's speed, "
            f"channels_last ln2d "
            f"{ms['f_layer_norm_channels_last'] / ms['ln2d_channels_last']:.2f}x F.layer_norm's"
        )
    ms = medians(STEP_VARIANTS, "")
    print(
        f"SimpleLN_CNN 32x3x64x64 step ms: LayerNorm2d {ms['step_layernorm2d']:.2f}, BatchNorm "
        f"{ms['step_batchnorm']:.2f}, ratio {ms['step_layernorm2d'] / ms['step_batchnorm']:.2f}"
    )


if __name__ == "__main__":
    main()
