"""Reading and writing ONNX files with one readable error for anything malformed.

Two ways in. ``load_model`` reads a whole model into memory, for the commands that work on
small ones. ``opened`` is for models of any size, up to and past protobuf's 2 GB: the graph is
read, the weights stay in files (the model's own external data, or a temporary file they are
moved to), and what works on the graph never holds a copy of them. ``write`` streams them
back out, tensor by tensor.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper
from tqdm import tqdm

from ln2d.errors import UserError, writing

MIN_FUSE_OPSET = 13  # ReduceSum with axes as input, and what the canonical rules assume
PROTOBUF_LIMIT = 2**31 - 1  # the largest message protobuf serializes: one inline .onnx file
SPILL_BYTES = 64 << 20  # inline weights above this are moved to a file while a command works
EXTERNAL_THRESHOLD = 1024  # tensors this large or larger go to the data file (onnx's default)
ALIGNMENT = 4096  # large tensors start at page offsets, so ONNX Runtime can map them
_CHUNK = 64 << 20  # bytes copied at a time between data files


def load_model(path: Path) -> onnx.ModelProto:
    """The whole model, weights included, checked and of an opset fusion supports."""
    path = Path(path)
    model = _parse(path, with_data=True)
    _check(model, path)
    return model


@dataclass(frozen=True)
class Opened:
    """A model file opened for a command: ``proto`` holds the graph and the small tensors; the
    others are references into data files in ``path``'s folder, which is where the model's own
    data lives, or a temporary copy of weights that came inline."""

    path: Path  # an .onnx file (the input itself, or its temporary copy)
    proto: onnx.ModelProto
    external: bool  # whether the file as given kept its weights outside itself

    @property
    def folder(self) -> Path:
        return self.path.parent


@contextmanager
def opened(path: Path, progress: bool = True) -> Iterator[Opened]:
    """Open ``path`` without loading its weights into memory; inline weights over SPILL_BYTES
    are first written to a temporary data file, removed on exit."""
    path = Path(path)
    proto = _parse(path, with_data=False)
    external = any(_is_external(t) for t in _initializers(proto.graph))
    if inline_bytes(proto) <= SPILL_BYTES:
        _check(proto, path, by_path=True)  # the external data stays inside path's folder
        yield Opened(path, proto, external)
        return
    with tempfile.TemporaryDirectory(prefix="ln2d-") as folder:
        copy = Path(folder) / path.name
        write(proto, copy, path.parent, external=True, progress=progress)
        del proto  # the inline weights: from here on they are read from the copy
        proto = onnx.load(str(copy), load_external_data=False)
        _check(proto, path, by_path=True, file=copy)  # the copy: the checker holds it once
        yield Opened(copy, proto, external)


def read_graph(path: Path) -> onnx.ModelProto:
    """The model without its external data, checked: for what only reads the graph."""
    path = Path(path)
    proto = _parse(path, with_data=False)
    _check(proto, path, by_path=True)
    return proto


def inline_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in _initializers(model.graph) if not _is_external(t))


def tensor_bytes(model: onnx.ModelProto) -> int:
    """The size of every initializer, wherever its data is."""
    return sum(_nbytes(t) for t in _initializers(model.graph))


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A path to write ``path`` (and its data file) at; moved into place only if the block
    succeeds, so a file of that name is either the old one or the whole new one."""
    path = Path(path)
    with writing(path):
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            yield folder / path.name
            for written in sorted(folder.iterdir(), key=lambda f: f == folder / path.name):
                os.replace(written, path.parent / written.name)  # the .onnx last
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def write(
    model: onnx.ModelProto,
    path: Path,
    folder: Path | None = None,
    external: bool = False,
    progress: bool = True,
) -> None:
    """Write ``model``, whose external references point into ``folder``, to ``path``, a tensor
    at a time: with ``external``, every initializer of EXTERNAL_THRESHOLD bytes or more goes to
    one data file beside it, ``<name>.data``; else all inline (under 2 GB only). The model is
    left as it was."""
    path = Path(path)
    model = _copy(model)
    initializers = list(_initializers(model.graph))
    total = sum(_nbytes(t) for t in initializers)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"write {path.name}", file=sys.stderr,
        disable=not (progress and total > SPILL_BYTES),
    ) as bar:  # fmt: skip
        if external:
            _write_external(model, path, folder, bar)
        else:
            _write_inline(model, path, folder, bar)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy: cheap, as the weights of a large model are references (``opened``)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _write_external(model: onnx.ModelProto, path: Path, folder: Path | None, bar) -> None:
    data = path.with_name(path.name + ".data")
    with data.open("wb") as out:
        for tensor in _initializers(model.graph):
            size = _nbytes(tensor)
            bar.update(size)
            if size < EXTERNAL_THRESHOLD:
                _load_data(tensor, folder)
                continue
            out.write(b"\0" * (-out.tell() % ALIGNMENT if size >= ALIGNMENT else 0))
            offset = out.tell()
            _copy_data(tensor, folder, out)
            _refer(tensor, data.name, offset, out.tell() - offset)
    onnx.save(model, str(path))


def _write_inline(model: onnx.ModelProto, path: Path, folder: Path | None, bar) -> None:
    """The graph without its initializers, then each initializer as one more ``graph`` field
    holding only it. Protobuf parsers merge repeated instances of a message field and append
    their repeated fields (the encoding guide: "Last one wins" / merging), so this reads back
    as the whole model, while only one tensor's bytes are in memory at a time."""
    graph_field = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
    initializer_field = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
    initializers = list(model.graph.initializer)
    del model.graph.initializer[:]
    for tensor in _initializers(model.graph):  # those of subgraphs stay where they are
        _load_data(tensor, folder)
    with path.open("wb") as out:
        out.write(model.SerializeToString())
        for tensor in initializers:
            _load_data(tensor, folder)
            payload = tensor.SerializeToString()
            inner = _key(initializer_field) + _varint(len(payload))
            out.write(_key(graph_field) + _varint(len(inner) + len(payload)) + inner)
            out.write(payload)
            bar.update(_nbytes(tensor))
            tensor.Clear()


def _key(field: int) -> bytes:
    return _varint(field << 3 | 2)  # wire type 2: length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _load_data(tensor: onnx.TensorProto, folder: Path | None) -> None:
    """Bring an external tensor's data into the proto (a no-op for an inline one)."""
    if _is_external(tensor):
        external_data_helper.load_external_data_for_tensor(tensor, str(folder))
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _copy_data(tensor: onnx.TensorProto, folder: Path | None, out) -> None:
    """Append the tensor's bytes to ``out``, from its data file or from the proto."""
    if not _is_external(tensor):
        out.write(tensor.raw_data or numpy_helper.to_array(tensor).tobytes())
        return
    info = {entry.key: entry.value for entry in tensor.external_data}
    remaining = int(info["length"]) if "length" in info else None
    with _inside(Path(folder), info["location"]).open("rb") as source:
        source.seek(int(info.get("offset", 0)))
        while remaining is None or remaining > 0:
            chunk = source.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
            if not chunk:
                break
            out.write(chunk)
            remaining = None if remaining is None else remaining - len(chunk)


def _inside(folder: Path, location: str) -> Path:
    """The data file ``location`` names, refused unless it is a relative path that stays inside
    ``folder`` once links are resolved: nothing is read outside the folder a model was given in."""
    path = folder / location
    if Path(location).is_absolute() or not path.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"external data {location!r} is outside the model's folder {folder}")
    return path


def _refer(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                  "uint64_data", "string_data"):  # fmt: skip
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        tensor.external_data.add(key=key, value=str(value))


def _initializers(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The graph's initializers and those of every subgraph (If, Loop, Scan bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs] if attribute.type in (5, 10) else []:
                yield from _initializers(sub)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _nbytes(tensor: onnx.TensorProto) -> int:
    if _is_external(tensor):
        length = next((e.value for e in tensor.external_data if e.key == "length"), None)
        if length is not None:
            return int(length)
    elements = 1
    for dim in tensor.dims:
        elements *= dim
    return elements * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _parse(path: Path, with_data: bool) -> onnx.ModelProto:
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=with_data)
    except (DecodeError, OSError, ValueError, onnx.checker.ValidationError) as exc:
        first = " ".join(str(exc).split())[:300]
        raise UserError(f"{path} is not a readable ONNX model ({first})") from exc
    if not model.graph.node:
        raise UserError(f"{path} is not an ONNX model (no graph nodes)")
    return model


def _check(
    proto: onnx.ModelProto, path: Path, by_path: bool = False, file: Path | None = None
) -> None:
    """onnx.checker, and the opset fusion needs. ``by_path``: the checker reads the file (or
    ``file``, a copy of it), and also checks that its external data stays inside its folder."""
    try:
        onnx.checker.check_model(str(file or path) if by_path else proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"{path} is not a valid ONNX model: {first}") from exc
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_FUSE_OPSET:
        raise UserError(f"{path} uses opset {opset}; ln2d fuse supports {MIN_FUSE_OPSET} and newer")


def raise_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model converted up to ``opset`` by onnx's version converter (never down)."""
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < current:
        raise UserError(f"--opset {opset} is below the model's {current}: it can only be raised")
    if opset == current:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
        # Strict inference rather than the checker: it never reads external data.
        onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except Exception as exc:  # the converter raises bare RuntimeErrors from C++
        first = " ".join(str(exc).split())[:200]
        raise UserError(f"cannot raise opset {current} -> {opset}: {first}") from exc
    return converted


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write atomically: a file of that name is either the old one or the whole new one."""
    path = Path(path)
    with writing(path):
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            onnx.save(model, str(partial))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
