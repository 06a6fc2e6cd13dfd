"""Bisect a parity failure by module: expose each LayerNorm2d site's output in the ONNX graph,
hook the PyTorch module it came from, and name the first site that diverges."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from ln2d.export import metadata
from ln2d.export.numerics import close
from ln2d.runtime import SessionSettings, open_session
from ln2d.training import predict_logits


def _sites(model: onnx.ModelProto) -> list[dict]:
    """Each fused site's output value and module: from the export's ``ln2d.fusion`` metadata,
    which names them for every form, else by matching again (fused sites show as already
    fused)."""
    from ln2d.export.fusion import match

    summary = metadata.read(model).fusion or {}
    recorded = [s for s in summary.get("sites", []) if s["status"] != "rejected"]
    if recorded:
        return recorded
    return [{"output": s.output, "module": s.module} for s in match(model).report.fused]


def bisect(torch_model, model, provider, x, atol, rtol) -> dict:
    """Expose each LayerNorm2d site's output in the graph and compare it with the output of
    the module it came from (hooked); name the first site that diverges, by module."""
    sites = [dict(s, index=i) for i, s in enumerate(_sites(model))]
    hooked = [s for s in sites if s.get("module") and _has_module(torch_model, s["module"])]
    if not hooked:
        return {"verdict": "no LayerNorm2d site maps to a module of its own: nothing to hook"}
    captured: dict[str, list[np.ndarray]] = {s["module"]: [] for s in hooked}

    def keep(name):
        # Copy: an in-place op that follows (ReLU) would change the tensor the hook saw.
        return lambda module, args, out: captured[name].append(out.detach().numpy().copy())

    handles = [
        torch_model.get_submodule(s["module"]).register_forward_hook(keep(s["module"]))
        for s in hooked
    ]
    try:
        predict_logits(torch_model, x.astype(np.float32))
    finally:
        for handle in handles:
            handle.remove()
    probed = onnx.ModelProto()
    probed.CopyFrom(model)
    names = [s["output"] for s in hooked]
    probed.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = open_session(probed, SessionSettings(provider))
    values = session.run(names, {session.get_inputs()[0].name: x})
    results = []
    for site, got in zip(hooked, values, strict=True):
        want = np.concatenate(captured[site["module"]])
        err = float(np.abs(got.astype(np.float64) - want).max())
        ok = close(got, want, atol, rtol)
        results.append(
            {"site": site["index"], "module": site["module"], "output": site["output"],
             "max_abs": err, "ok": ok}
        )  # fmt: skip
    first = next((r for r in results if not r["ok"]), None)
    skipped = len(sites) - len(hooked)
    verdict = (
        "every LayerNorm2d site agrees: the divergence is elsewhere"
        if first is None
        else f"first divergence at LayerNorm2d site {first['site']} ({first['module']}): "
        f"max abs error {first['max_abs']:.3g}"
    )
    if skipped:
        verdict += f" ({skipped} inline site(s) without a module of their own not checked)"
    return {"verdict": verdict, "first_diverging_site": first, "sites": results}


def _has_module(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
