"""ONNX export, LayerNorm2d fusion, parity checks and benchmarks for ln2d models.

The Python API for a network you already hold::

    from ln2d.export import export_module, check_parity

``export_module`` and ``check_parity`` are imported lazily, so that torch-free parts of this
package (``ln2d.export.timing``, the bench worker) never load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["check_parity", "export_module"]

if TYPE_CHECKING:
    from ln2d.export.onnx_export import export_module
    from ln2d.export.parity.check import check_parity


def __getattr__(name: str):
    if name == "export_module":
        from ln2d.export.onnx_export import export_module

        return export_module
    if name == "check_parity":
        from ln2d.export.parity.check import check_parity

        return check_parity
    raise AttributeError(f"module 'ln2d.export' has no attribute {name!r}")
