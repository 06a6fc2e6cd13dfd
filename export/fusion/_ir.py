"""Small readers over onnx-ir values and nodes, shared by the rewrite rules."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant node), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def scalar(value: ir.Value | None) -> float | None:
    """A constant with exactly one element, as a Python float."""
    array = const_array(value)
    return None if array is None or array.size != 1 else float(array.reshape(()))


def static_scalar(value: ir.Value | None) -> float | None:
    """A scalar's value: a constant, or a static dimension read at run time through
    Shape -> Gather (-> Cast), as TorchScript writes ``x.shape[1]``."""
    known = scalar(value)
    node = None if known is not None or value is None else value.producer()
    if node is None:
        return known
    if node.op_type == "Cast":
        return static_scalar(node.inputs[0])
    shape = node.inputs[0].producer() if node.op_type == "Gather" else None
    index = const_array(node.inputs[1]) if shape is not None else None
    if shape is None or shape.op_type != "Shape" or index is None or index.size != 1:
        return None
    start = shape.attributes.get("start")
    axis = int(index.reshape(())) + (start.as_int() if start is not None else 0)
    dim = static_dim(shape.inputs[0], axis) if axis >= 0 else None
    return None if dim is None else float(dim)


def axes_are_input(op_type: str, opset: int) -> bool:
    """Whether a Reduce* op takes its axes as an input (ReduceSum from opset 13, the others
    from 18) rather than as an attribute."""
    return opset >= (13 if op_type == "ReduceSum" else 18)


def reduce_axes(node: ir.Node) -> list[int] | None:
    """Axes of a Reduce* node, whether given as attribute (opset < 18) or as input (>= 18)."""
    if "axes" in node.attributes:
        return list(node.attributes["axes"].as_ints())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_array(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return None  # no axes: reduces over everything


def keepdims(node: ir.Node) -> int:
    attr = node.attributes.get("keepdims")
    return 1 if attr is None else attr.as_int()


def rank(value: ir.Value) -> int | None:
    return None if value.shape is None else value.shape.rank()


def normalized_axes(node: ir.Node, data: ir.Value) -> list[int] | None:
    """Reduce axes made non-negative using the data's rank; None if either is unknown."""
    axes, r = reduce_axes(node), rank(data)
    if axes is None or r is None:
        return None
    return sorted(a % r for a in axes)


def static_dim(value: ir.Value, axis: int) -> int | None:
    if value.shape is None or value.shape.rank() <= axis:
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None


def broadcasts_into(small: ir.Value, big: ir.Value) -> bool:
    """Every dimension of small is 1 or equal to big's (aligned from the right)."""
    if small.shape is None or big.shape is None or small.shape.rank() > big.shape.rank():
        return False
    offset = big.shape.rank() - small.shape.rank()
    return all(
        ds == 1 or same_shape_dim(ds, big.shape[offset + i]) for i, ds in enumerate(small.shape)
    )


def same_shape_dim(a, b) -> bool:
    return a == b and (isinstance(a, int) or getattr(a, "value", None) is not None)


# A static size, "dimension i of that tensor", or None: a size computed some other way (the
# exporter's ``height // 4``), whose value no rule may rely on.
DimRef = int | tuple[ir.Value, int] | None


def shape_elements(value: ir.Value) -> list[DimRef] | None:
    """Read a 1-D shape tensor as a list of sizes or tensor dimensions, as far as it can be
    proven, with None for an element that cannot; None when not even its length is known.

    Understands constants, ``Shape(t, start, end)``, ``Concat`` and ``Reshape(·, [-1])`` /
    ``Squeeze`` / ``Unsqueeze`` wrappers: the idiom exporters use to rebuild a shape at run time.
    """
    array = const_array(value)
    if array is not None:
        return [int(v) for v in array.reshape(-1)]
    node = value.producer()
    if node is None:
        return _unknown_elements(value)
    if node.op_type in ("Reshape", "Squeeze", "Unsqueeze", "Identity"):
        return shape_elements(node.inputs[0]) or _unknown_elements(value)
    if node.op_type == "Concat":
        parts = [shape_elements(v) for v in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if node.op_type == "Shape":
        r = rank(node.inputs[0])
        if r is None:
            return None
        start = node.attributes.get("start")
        end = node.attributes.get("end")
        lo = 0 if start is None else start.as_int() % r if start.as_int() < 0 else start.as_int()
        hi = r if end is None else min(end.as_int() % r if end.as_int() < 0 else end.as_int(), r)
        return [(node.inputs[0], i) for i in range(lo, hi)]
    return _unknown_elements(value)


def _unknown_elements(value: ir.Value) -> list[DimRef] | None:
    """One unknown element per entry of a 1-D value of static length; else None."""
    shape = value.shape
    if shape is None or shape.rank() != 1 or not isinstance(shape[0], int):
        return None
    return [None] * shape[0]


def _resolves_to(element: DimRef, value: ir.Value, axis: int) -> bool:
    """element names the same size as value's dimension ``axis``."""
    if element == (value, axis):
        return True
    dim = value.shape[axis] if value.shape is not None else None
    if isinstance(element, tuple):
        tensor, index = element
        return tensor.shape is not None and same_shape_dim(tensor.shape[index], dim)
    return isinstance(element, int) and element == dim


def expand_is_redundant(a: ir.Value, v: ir.Value, shape: ir.Value) -> bool:
    """g(a, Expand(v, shape)) == g(a, v) when, at every position, the target is 1, or is a's
    size, or v already spans a's size there (same symbol). The last case assumes what exporters
    guarantee when they rebuild a shape with Shape/Concat: the symbolic sizes they read are
    equal (torch.export proves it, ONNX shape inference cannot see through e.g. a padded Conv).
    """
    target, r = shape_elements(shape), rank(a)
    if target is None or r is None or len(target) > r or not broadcasts_into(v, a):
        return False
    offset = r - len(target)
    v_offset = r - v.shape.rank()

    def spans(j: int) -> bool:
        axis = offset + j
        return axis >= v_offset and same_shape_dim(v.shape[axis - v_offset], a.shape[axis])

    return all(e == 1 or _resolves_to(e, a, offset + j) or spans(j) for j, e in enumerate(target))
