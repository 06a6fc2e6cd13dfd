"""Every fused form on ONNX Runtime's CUDA provider: parity with PyTorch, and where each node ran.

For each bench network (random weights) and each standard-op form that lowers all its sites,
in fp32 and as ``ln2d export --precision fp16`` makes it, on one random input:
- the largest error against PyTorch eager in fp32 on the CPU, gated by ``ln2d parity``'s
  tolerances for the precision (fp16's for the fp16 graphs);
- the nodes ONNX Runtime ran on its CPU provider instead (read from its profile): such a
  fallback costs two copies between host and GPU per site on every call.
Sessions use ln2d's provider options (``PROVIDER_OPTIONS``: no TF32 for fp32).

Needs onnxruntime-gpu with CUDAExecutionProvider and a GPU; exits 1 if any row fails.

    python scripts/crosscheck_cuda.py [--json OUT] [--opset N] [--network NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
import torch

from ln2d.export.bench_models import NETWORKS, build
from ln2d.export.fp16 import to_fp16
from ln2d.export.fusion import lower, match
from ln2d.export.fusion.forms import FORMS, lowers
from ln2d.export.numerics import close, tolerance
from ln2d.export.onnx_export import INPUT_NAME, default_opset, module_to_onnx
from ln2d.export.placement import run_and_place

SHAPES = {"ln2d": (4, 96, 28, 28), "convnext-block": (4, 96, 28, 28), "simple": (4, 3, 32, 32)}
SHAPES["convnext-atto"] = (2, 3, 224, 224)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows as JSON")
    parser.add_argument(
        "--opset",
        type=int,
        default=default_opset("cuda"),
        help="export opset (default: what ln2d export --target cuda writes)",
    )
    parser.add_argument("--network", action="append", choices=SHAPES, help="(default: all)")
    args = parser.parse_args()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("crosscheck_cuda: this onnxruntime has no CUDAExecutionProvider", file=sys.stderr)
        return 2
    rows = [row for network in args.network or SHAPES for row in _network_rows(network, args.opset)]
    print("| network | form | precision | max abs | gate | nodes on CPU | status |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['network']} | {r['form']} | {r['precision']} | {r['max_abs']:.2e} | "
            f"atol={r['atol']:g} rtol={r['rtol']:g} | {', '.join(r['on_cpu']) or '-'} | "
            f"{r['status']} |"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0 if all(r["status"] == "pass" for r in rows) else 1


def _network_rows(name: str, opset: int) -> list[dict]:
    shape = SHAPES[name]
    channels = shape[1]
    module = build(NETWORKS[name], channels)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = module(x).numpy()
    example = torch.zeros(2, channels, *shape[2:])
    matched = match(module_to_onnx(module, example, opset, NETWORKS[name].min_size))
    sites = matched.report.fused
    rows = []
    for form in FORMS:
        if form == "native" or not all(lowers(form, site) for site in sites):
            continue
        fused = lower(matched, {site.name: form for site in sites})[0]
        for precision, model in (("fp32", fused), ("fp16", to_fp16(fused))):
            (got,), on_cpu = run_and_place(model.SerializeToString(), {INPUT_NAME: x.numpy()})
            atol, rtol = tolerance(np.float16 if precision == "fp16" else np.float32)
            rows.append(
                {
                    "network": name,
                    "opset": opset,
                    "shape": list(shape),
                    "form": form,
                    "precision": precision,
                    "max_abs": float(np.max(np.abs(got - expected))),
                    "atol": atol,
                    "rtol": rtol,
                    "on_cpu": on_cpu,
                    "status": "pass" if close(got, expected, atol, rtol) else "FAIL",
                }
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
