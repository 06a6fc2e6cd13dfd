"""The dependency rules of docs/architecture.md, read from the source: no import cycle inside
serve/, export imports nothing of serve, serve nothing of export or the model library, only
ln2d/runtime.py opens ONNX Runtime sessions, and nothing that works on ONNX files alone loads
torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

PACKAGES = {"ln2d": ROOT / "ln2d", "ln2d.export": ROOT / "export", "ln2d.serve": ROOT / "serve"}
MODEL_LIBRARY = ("ln2d.layers", "ln2d.model", "ln2d.training", "ln2d.data", "ln2d.checkpoint")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every ln2d module the file imports, at any depth (local imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("ln2d")}


GRAPH = {name: _imports(path) for name, path in _modules().items()}


def _within(prefix: str) -> dict[str, set[str]]:
    modules = {m for m in GRAPH if m.startswith(prefix)}
    return {m: {i for i in GRAPH[m] if i in modules and i != m} for m in modules}


def test_no_import_cycle_inside_serve():
    graph, done, path = _within("ln2d.serve"), set(), []

    def visit(module: str) -> None:
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module in done:
            return
        path.append(module)
        for imported in graph[module]:
            visit(imported)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_export_imports_nothing_of_serve():
    offenders = {m: i for m, i in GRAPH.items() if m.startswith("ln2d.export")
                 and any(n.startswith("ln2d.serve") for n in i)}  # fmt: skip
    assert not offenders


def test_serve_imports_neither_export_nor_the_model_library():
    banned = ("ln2d.export", *MODEL_LIBRARY)
    offenders = {m: sorted(n for n in i if n.startswith(banned))
                 for m, i in GRAPH.items() if m.startswith("ln2d.serve")}  # fmt: skip
    assert not {m: n for m, n in offenders.items() if n}


def test_only_the_runtime_module_opens_onnx_runtime_sessions():
    opening = {
        name
        for name, path in _modules().items()
        if "InferenceSession(" in path.read_text() or "SessionOptions(" in path.read_text()
    }
    assert opening <= {"ln2d.runtime", "ln2d.native"}, opening  # native: the op's registration


# The ONNX-only parts: what works on an ONNX file, with no PyTorch module involved.
ONNX_ONLY = (
    "ln2d.export.fusion", "ln2d.export.onnx_io", "ln2d.export.quantize", "ln2d.export.timing",
    "ln2d.export.bench_worker", "ln2d.export.bench_fuse", "ln2d.export.triton_repo",
    "ln2d.export.parity.report", "ln2d.export.parity.compare", "ln2d.export.parity.inputs",
    "ln2d.runtime", "ln2d.metadata",
)  # fmt: skip


def test_nothing_onnx_only_imports_torch():
    imports = "; ".join(f"import {module}" for module in ONNX_ONLY)
    probe = f"import sys; {imports}; print(sorted(m for m in sys.modules if m == 'torch'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_only_the_metadata_modules_read_or_write_model_metadata():
    touching = {n for n, path in _modules().items() if "model.metadata_props" in path.read_text()}
    assert touching == {"ln2d.export.metadata"}, touching
    # The server gets ONNX Runtime's map of entries and hands it to the schema, nothing more.
    (reader,) = [line for line in (ROOT / "serve" / "model.py").read_text().splitlines()
                 if "custom_metadata_map" in line]  # fmt: skip
    assert "ModelMetadata.from_props(" in reader
