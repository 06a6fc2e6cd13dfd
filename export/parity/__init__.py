"""``ln2d parity``: PyTorch eager against ONNX Runtime per provider, and the fused graph against
the unfused one, in parts:

- ``report``: options, comparisons, the report and its table (torch-free);
- ``compare``: how a comparison is judged, elementwise or by the answers (torch-free);
- ``inputs``: the data a check or a calibration runs on (torch-free);
- ``bisect``: the first LayerNorm2d site that diverges, by module (torch hooks);
- ``check``: ``check_parity``, which runs them (torch).

``check_parity`` is imported lazily, so that the torch-free parts never load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["check_parity"]

if TYPE_CHECKING:
    from ln2d.export.parity.check import check_parity


def __getattr__(name: str):
    if name == "check_parity":
        from ln2d.export.parity.check import check_parity

        return check_parity
    raise AttributeError(f"module 'ln2d.export.parity' has no attribute {name!r}")
