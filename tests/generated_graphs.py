"""Channels-first LayerNorms written directly as ONNX graphs from independent choices, no
exporter and no torch: the fast slice of the generated matcher test.

A ``GraphRecipe`` names one way to write each part at the ONNX level: how the channel mean is
taken (ReduceMean with keepdims, ReduceSum / C, keepdims=0 and Unsqueeze or Reshape back), the
axis (1 or -3), the variance, the normalisation, the affine, the storage dtype (fp32; fp16 in
and out; or an fp32 network that rounds to fp16 on each side of the norm, as one storing its
activations in fp16 does, with a 1x1 Conv after it), and whether a Conv feeds the norm.
``build(recipe, opset)`` writes that graph in the opset's own idiom (axes as attribute or
input). A ``near_miss`` recipe computes something that is not a biased-variance LayerNorm over
C with a per-channel affine; ``reference`` computes what a LayerNorm recipe must give, in
float64 numpy, independent of the fuser.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from hypothesis import HealthCheck, settings
from onnx import TensorProto, helper, numpy_helper

from ln2d.export.fusion import FusionReport, fuse_model
from ln2d.export.fusion.targets import TARGETS, usable

MEANS = ("reduce_mean", "sum_div", "unsqueeze", "reshape")
AXES = (1, -3)
VARIANCES = ("mul", "pow", "second_moment", "second_moment_max", "second_moment_clip")
NORMALISATIONS = ("div_sqrt", "mul_reciprocal_sqrt", "mul_one_over_sqrt", "pow_minus_half")
AFFINES = ("weight+bias", "weight", "bias", "none", "weight_first")
PARAMETER_SHAPES = ("c11", "1c11")
DTYPES = ("fp32", "fp16_storage", "fp16_round_trip")
NOT_A_LAYERNORM = ("unbiased", "eps_outside_sqrt", "other_axis", "rms", "eps_input")
NEAR_MISSES = (*NOT_A_LAYERNORM, "per_pixel_scale")

# Below opset 17 there is no LayerNormalization: the cuda and portable targets refuse (and say
# why, tests/export/fusion/test_opsets.py); the cpu targets fuse to standard ops or ln2d's own op.
LAYERNORMALIZATION_TARGETS = ("cuda", "portable")
C = 5
EPS = 1e-5
RESHAPE_OPSET = 15  # Shape(start, end), which the Reshape-back idiom reads the shape with
HEAD = np.random.default_rng(2).standard_normal((C, C, 1, 1)) * 2  # the 1x1 Conv after a round trip


@dataclass(frozen=True)
class GraphRecipe:
    mean: str = "reduce_mean"
    axis: int = 1
    variance: str = "mul"
    normalise: str = "div_sqrt"
    affine: str = "weight+bias"
    parameters: str = "c11"
    dtype: str = "fp32"
    after_conv: bool = False
    near_miss: str | None = None

    def __str__(self) -> str:
        parts = [self.mean, f"axis={self.axis}", self.variance, self.normalise, self.affine]
        parts += [self.parameters, self.dtype, "conv" if self.after_conv else "input"]
        return "/".join(parts + ([f"NEAR-MISS:{self.near_miss}"] if self.near_miss else []))


def generated(examples: int):
    """Hypothesis settings for a generated matcher test: bounded in examples, no per-example
    deadline (an export can take seconds on a loaded machine), and the same combinations on
    every run, so that a failure reproduces."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


def targets_at(opset: int) -> list[str]:
    """The targets a LayerNorm must fuse for at this opset, on this install."""
    return [
        t for t in TARGETS if usable(t) and (opset >= 17 or t not in LAYERNORMALIZATION_TARGETS)
    ]


class _Graph:
    """Nodes and initializers under construction; every node gets a readable unique name."""

    def __init__(self, opset: int) -> None:
        self.opset, self.nodes, self.inits, self.inputs = opset, [], [], []
        self._ids = itertools.count()

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        index = next(self._ids)
        out = f"{op_type.lower()}_{index}"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], name=f"{op_type}_{index}", **attributes)
        )
        return out

    def const(self, array, dtype=np.float32, name: str | None = None) -> str:
        name = name or f"const_{next(self._ids)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def reduce(self, op_type: str, v: str, axes: list[int], keep: int) -> str:
        if op_type == "ReduceSum" or self.opset >= 18:  # axes became an input
            return self.op(op_type, v, self.const(axes, np.int64), keepdims=keep)
        return self.op(op_type, v, axes=axes, keepdims=keep)


def build(recipe: GraphRecipe, opset: int) -> onnx.ModelProto:
    """The recipe's graph: x (N, 3 or C, H, W) float32 or float16 -> y of the same type."""
    g = _Graph(opset)
    storage = TensorProto.FLOAT16 if recipe.dtype == "fp16_storage" else TensorProto.FLOAT
    x = "x"
    if recipe.after_conv:
        weight = np.random.default_rng(1).standard_normal((C, 3, 3, 3)) * 0.3
        x = g.op("Conv", x, g.const(weight, _numpy(storage), "conv_weight"), pads=[1, 1, 1, 1])
    rounded = recipe.dtype == "fp16_round_trip"
    if rounded:
        x = g.op("Cast", x, to=TensorProto.FLOAT16)
    if storage == TensorProto.FLOAT16 or rounded:
        x = g.op("Cast", x, to=TensorProto.FLOAT)
    y = _affine(g, recipe, _normalised(g, recipe, x))
    if storage == TensorProto.FLOAT16 or rounded:
        y = g.op("Cast", y, to=TensorProto.FLOAT16)
    if rounded:
        y = g.op("Conv", g.op("Cast", y, to=TensorProto.FLOAT), g.const(HEAD, name="head"))
    g.nodes[-1].output[0] = "y"
    channels = 3 if recipe.after_conv else C
    inputs = [helper.make_tensor_value_info("x", storage, [None, channels, None, None])]
    if recipe.near_miss == "eps_input":
        inputs.append(helper.make_tensor_value_info("eps", TensorProto.FLOAT, []))
    graph = helper.make_graph(
        g.nodes,
        "generated",
        inputs,
        [helper.make_tensor_value_info("y", storage, [None, C, None, None])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _numpy(storage: int) -> type:
    return np.float16 if storage == TensorProto.FLOAT16 else np.float32


def _axis(recipe: GraphRecipe) -> int:
    """The recipe's channel axis, or the next one (H) for the other-axis near-miss."""
    return recipe.axis + 1 if recipe.near_miss == "other_axis" else recipe.axis


def _mean(g: _Graph, recipe: GraphRecipe, v: str) -> str:
    """The mean of v over the recipe's axis, kept as a size-1 axis, written the recipe's way."""
    axes = [_axis(recipe)]
    if recipe.mean == "reduce_mean":
        return g.reduce("ReduceMean", v, axes, 1)
    if recipe.mean == "sum_div":
        count = C if axes[0] % 4 == 1 else None
        if count is None:  # over H: the count is read from the shape at run time
            size = g.op("Gather", g.op("Shape", v), g.const(axes[0] % 4, np.int64))
            return g.op("Div", g.reduce("ReduceSum", v, axes, 1), g.op("Cast", size, to=1))
        return g.op("Div", g.reduce("ReduceSum", v, axes, 1), g.const(count))
    reduced = g.reduce("ReduceMean", v, axes, 0)
    if recipe.mean == "unsqueeze":
        return g.op("Unsqueeze", reduced, g.const(axes, np.int64))
    keep = axes[0] % 4
    shape = g.op(
        "Concat",
        g.op("Shape", v, start=0, end=keep),
        g.const([1], np.int64),
        g.op("Shape", v, start=keep + 1),
        axis=0,
    )
    return g.op("Reshape", reduced, shape)


def _square(g: _Graph, recipe: GraphRecipe, v: str) -> str:
    return g.op("Pow", v, g.const(2.0)) if recipe.variance == "pow" else g.op("Mul", v, v)


def _normalised(g: _Graph, recipe: GraphRecipe, x: str) -> str:
    eps = "eps" if recipe.near_miss == "eps_input" else g.const(EPS)
    if recipe.near_miss == "rms":
        return g.op("Div", x, g.op("Sqrt", g.op("Add", _mean(g, recipe, g.op("Mul", x, x)), eps)))
    mean = _mean(g, recipe, x)
    d = g.op("Sub", x, mean)
    if recipe.near_miss == "unbiased":
        total = g.reduce("ReduceSum", _square(g, recipe, d), [_axis(recipe)], 1)
        var = g.op("Div", total, g.const(C - 1))
    elif recipe.variance.startswith("second_moment"):
        var = g.op("Sub", _mean(g, recipe, g.op("Mul", x, x)), g.op("Mul", mean, mean))
        if recipe.variance == "second_moment_max":
            var = g.op("Max", var, g.const(0.0))
        elif recipe.variance == "second_moment_clip":
            var = g.op("Clip", var, g.const(0.0))
    else:
        var = _mean(g, recipe, _square(g, recipe, d))
    if recipe.near_miss == "eps_outside_sqrt":
        return g.op("Div", d, g.op("Add", g.op("Sqrt", var), eps))
    shifted = g.op("Add", var, eps)
    if recipe.normalise == "div_sqrt":
        return g.op("Div", d, g.op("Sqrt", shifted))
    if recipe.normalise == "mul_reciprocal_sqrt":
        return g.op("Mul", d, g.op("Reciprocal", g.op("Sqrt", shifted)))
    if recipe.normalise == "mul_one_over_sqrt":
        return g.op("Mul", d, g.op("Div", g.const(1.0), g.op("Sqrt", shifted)))
    return g.op("Mul", d, g.op("Pow", shifted, g.const(-0.5)))


def _affine(g: _Graph, recipe: GraphRecipe, y: str) -> str:
    if recipe.near_miss == "per_pixel_scale":
        return g.op("Mul", y, g.reduce("ReduceMax", y, [1], 1))
    weight, bias = parameters(recipe)
    if recipe.affine in ("weight+bias", "weight"):
        y = g.op("Mul", y, g.const(weight))
    if recipe.affine == "weight_first":
        y = g.op("Mul", g.const(weight), y)
    if recipe.affine in ("weight+bias", "bias", "weight_first"):
        y = g.op("Add", y, g.const(bias))
    return y


def parameters(recipe: GraphRecipe) -> tuple[np.ndarray, np.ndarray]:
    shape = (C, 1, 1) if recipe.parameters == "c11" else (1, C, 1, 1)
    rng = np.random.default_rng(0)
    return rng.uniform(0.5, 1.5, shape), rng.uniform(-0.5, 0.5, shape)


def reference(recipe: GraphRecipe, model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """What a LayerNorm recipe computes, in float64, from the model's own Conv weight."""
    v = x.astype(np.float64)
    if recipe.after_conv:
        (init,) = [i for i in model.graph.initializer if i.name == "conv_weight"]
        weight = numpy_helper.to_array(init).astype(np.float64)
        v = _conv3x3(v, weight)
    if recipe.dtype != "fp32":
        v = v.astype(np.float16).astype(np.float64)  # the norm's input is stored in fp16
    mean = v.mean(1, keepdims=True)
    y = (v - mean) / np.sqrt(((v - mean) ** 2).mean(1, keepdims=True) + EPS)
    if recipe.near_miss == "per_pixel_scale":
        y = y * y.max(1, keepdims=True)
    else:
        weight, bias = (p.reshape(1, C, 1, 1) for p in parameters(recipe))
        if recipe.affine in ("weight+bias", "weight", "weight_first"):
            y = y * weight
        if recipe.affine in ("weight+bias", "bias", "weight_first"):
            y = y + bias
    if recipe.dtype == "fp16_round_trip":  # stored in fp16, then the 1x1 Conv
        y = np.einsum("nchw,oc->nohw", y.astype(np.float16).astype(np.float64), HEAD[:, :, 0, 0])
    return y


def _conv3x3(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, weight.shape[0], h, w))
    for i, j in itertools.product(range(3), range(3)):
        out += np.einsum("nchw,oc->nohw", padded[:, :, i : i + h, j : j + w], weight[:, :, i, j])
    return out


class Coverage:
    """What a generated test ran: its distinct combinations, how many fused at every target
    and how many near-misses came back byte for byte. tests/conftest.py prints every one."""

    every: ClassVar[list[Coverage]] = []

    def __init__(self, label: str) -> None:
        self.label, self.ran, self.fused, self.left = label, Counter(), set(), set()
        Coverage.every.append(self)

    def line(self) -> str:
        return (
            f"{self.label}: {len(self.ran)} distinct combinations ran "
            f"({sum(self.ran.values())} fusions, one per target), {len(self.fused)} fused at "
            f"every target, {len(self.left)} near-misses left byte for byte"
        )


def fuse_at_every_target(
    model: onnx.ModelProto,
    opset: int,
    combination: str,
    near_miss: str | None,
    coverage: Coverage,
    statuses: tuple[str, ...] = ("fused",),
) -> list[tuple[str, onnx.ModelProto, FusionReport]]:
    """Fuse ``model`` for every target the opset allows, with the gate, and hold each result to
    the generated tests' rule: a near-miss that is no LayerNorm comes back byte for byte; a
    LayerNorm is one site of ``statuses``, and a per-pixel scale after it stays outside. Counts
    the coverage; returns (target, fused model, report) for the caller's own checks (numbers,
    rejection reasons)."""
    left = near_miss in NOT_A_LAYERNORM
    results = []
    for target in targets_at(opset):
        coverage.ran[combination] += 1
        fused, report = fuse_model(model, target)  # the gate runs: FusionError if it fails
        where = f"{combination} {target}: {report.table()}"
        if left:
            assert not report.fused, where
            assert fused.SerializeToString() == model.SerializeToString(), where
        else:
            assert [s.status for s in report.fused] in [[status] for status in statuses], where
        if near_miss == "per_pixel_scale":  # the norm fuses; the scale is no affine
            assert report.fused[0].affine == "none", where
        results.append((target, fused, report))
    (coverage.left if left else coverage.fused).add(combination)
    return results
