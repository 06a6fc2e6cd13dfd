"""Static INT8 quantization (QDQ) with every LayerNorm2d kept in float.

    fuse (cpu forms, but no centred_conv) -> calibrate on real images -> quantize_static (QDQ,
    nodes of every site excluded) -> checker + ONNX Runtime load -> accuracy against fp32

A quantizer that puts Q/DQ pairs inside a norm rounds its mean and variance to 8 bits and
wrecks its precision. The sites' statistics nodes (``fusion.site_nodes``) are left out of
quantization: the norm reads the dequantized input and computes in float.

The scheme (how weights are stored) decides whether the accuracy measured here holds on every
x86-64 CPU: on one without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with
AVX2's ``vpmaddubsw``, which adds pairs of products in 16 bits and saturates. 7-bit weights
(``u8s7``) cannot saturate it; see SCHEMES and docs/precision.md.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from ln2d import machine
from ln2d.constants import DEFAULT_INT8_SCHEME
from ln2d.errors import UserError
from ln2d.export import metadata, record
from ln2d.export.fusion import Site, fuse_model
from ln2d.export.fusion.site_nodes import statistics_nodes
from ln2d.export.fusion.verify import FusionError
from ln2d.export.numerics import tolerance
from ln2d.export.onnx_io import load_model, save_model
from ln2d.metadata import ModelMetadata
from ln2d.runtime import open_session

CALIBRATION_BATCH = 16
# An int8 model's parity record allows twice the error to the float model measured here. Its
# integer kernels compute the same integers on every CPU where they do not saturate, so a replay
# there measures the same error (seen: equal on AVX-512 VNNI and under qemu -cpu Haswell with
# u8s7); u8s8 on the saturating AVX2 path measured 11x (docs/precision.md).
RECORD_MARGIN = 2.0


@dataclass(frozen=True)
class Scheme:
    """How the weights are stored. Activations are uint8 in every scheme: on x86 ONNX Runtime
    fuses only uint8 activations into QLinearConv (with int8 ones it ran float Convs between
    Q/DQ pairs, 1.5x slower than fp32 on the ConvNeXt-atto-like network)."""

    weights: QuantType
    reduce_range: bool  # weights in 7 bits
    summary: str

    def to_json(self) -> dict:
        bits = 7 if self.reduce_range else 8
        signed = "int" if self.weights == QuantType.QInt8 else "uint"
        return {"activations": "uint8", "weights": f"{signed}{bits}"}


# By ln2d.constants.INT8_SCHEMES. Measured on both of ONNX Runtime's x86 paths (AVX-512 VNNI, and
# AVX2 under qemu -cpu Haswell) by scripts/int8_schemes.py: docs/benchmarks.md, "INT8 schemes".
SCHEMES = {
    "u8s7": Scheme(
        QuantType.QInt8, True, "7-bit weights: the same accuracy on every x86-64 CPU (default)"
    ),
    "u8s8": Scheme(
        QuantType.QInt8,
        False,
        "8-bit weights: loses accuracy on x86 CPUs without VNNI (AVX2's 16-bit sums saturate)",
    ),
    "u8u8": Scheme(
        QuantType.QUInt8, False, "unsigned 8-bit weights: no saturation, slower kernels"
    ),
}


@dataclass(frozen=True)
class QuantizeOptions:
    calibrate: str = "digits"  # "digits" or an image folder
    samples: int = 256
    per_channel: bool = False
    progress: bool = True
    scheme: str = DEFAULT_INT8_SCHEME  # a key of SCHEMES


@dataclass(frozen=True)
class QuantizeReport:
    model: str
    output: str
    calibration: str
    calibration_samples: int
    evaluation_samples: int
    per_channel: bool
    scheme: str
    float_sites: int  # LayerNorm2d sites left in float
    float_nodes: int  # their nodes
    accuracy_fp32: float | None  # on the evaluation images, where their labels are the model's
    accuracy_int8: float | None
    top1_agreement: float

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return 100 * (self.accuracy_fp32 - self.accuracy_int8)

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy_drop_points": self.accuracy_drop_points}

    def table(self) -> str:
        def pct(value: float | None) -> str:
            return "n/a (labels unknown)" if value is None else f"{100 * value:.2f} %"

        drop = self.accuracy_drop_points
        return "\n".join(
            [
                f"quantized {self.model} -> {self.output} (QDQ, {self.scheme}: "
                f"{SCHEMES[self.scheme].to_json()['weights']} "
                f"{'per-channel' if self.per_channel else 'per-tensor'} weights)",
                f"calibration: {self.calibration_samples} images from {self.calibration}; "
                f"evaluated on {self.evaluation_samples} others",
                f"LayerNorm2d kept in float: {self.float_sites} sites, {self.float_nodes} nodes",
                f"accuracy: fp32 {pct(self.accuracy_fp32)}, int8 {pct(self.accuracy_int8)}"
                + ("" if drop is None else f" (drop {drop:+.2f} points)"),
                f"top-1 agreement with fp32: {100 * self.top1_agreement:.2f} %",
            ]
        )


def quantize(model_path: Path, output: Path, options: QuantizeOptions) -> QuantizeReport:
    """Write the INT8 model to ``output`` and report its accuracy against the float model."""
    from ln2d.export.parity.inputs import model_inputs

    source = load_model(model_path)
    images, labels = model_inputs(model_path, options.calibrate)
    order = np.random.default_rng(0).permutation(len(images))
    if not 1 <= options.samples < len(images):
        raise UserError(
            f"--samples {options.samples}: needs 1 to {len(images) - 1} of the {len(images)} "
            f"images in {options.calibrate}, and the rest to evaluate on"
        )
    calibration, evaluation = order[: options.samples], order[options.samples :]
    quantized, keep_float, sites = quantize_model(source, images[calibration], options)
    metadata.write(
        quantized,
        ModelMetadata(
            precision={
                "precision": "int8",
                "format": "QDQ",
                "scheme": options.scheme,
                **SCHEMES[options.scheme].to_json(),
                "per_channel": options.per_channel,
                "calibration": options.calibrate,
                "calibration_samples": len(calibration),
                "float_sites": sites,
                "measured_on": machine.describe(),
            }
        ),
    )
    _check(quantized)
    fp32, int8 = (_logits(m, images[evaluation]) for m in (source, quantized))
    record.attach(quantized, _record(quantized, images[evaluation], fp32, int8))
    save_model(quantized, output)
    truth = labels[evaluation] if labels is not None else None
    return QuantizeReport(
        model=str(model_path),
        output=str(output),
        calibration=options.calibrate,
        calibration_samples=len(calibration),
        evaluation_samples=len(evaluation),
        per_channel=options.per_channel,
        scheme=options.scheme,
        float_sites=len(sites),
        float_nodes=len(keep_float),
        accuracy_fp32=None if truth is None else float((fp32.argmax(1) == truth).mean()),
        accuracy_int8=None if truth is None else float((int8.argmax(1) == truth).mean()),
        top1_agreement=float((fp32.argmax(1) == int8.argmax(1)).mean()),
    )


def _record(model: onnx.ModelProto, images: np.ndarray, fp32: np.ndarray, int8: np.ndarray):
    """The first evaluation images and the float model's logits for them, held to RECORD_MARGIN
    times the error the int8 model has here."""
    count = record.within_budget(images[: record.SAMPLES], [fp32[: record.SAMPLES]])
    measured = float(np.abs(int8[:count] - fp32[:count]).max())
    atol = max(RECORD_MARGIN * measured, tolerance(np.float32)[0])
    inputs = {model.graph.input[0].name: images[:count]}
    return record.checked(model, inputs, [fp32[:count]], "the float model", atol, 0.0)


def quantize_model(
    model: onnx.ModelProto, images: np.ndarray, options: QuantizeOptions
) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """The INT8 model calibrated on ``images``, the nodes left in float and their sites.
    Fuses first."""
    if options.scheme not in SCHEMES:
        raise UserError(f"unknown scheme {options.scheme!r}: choose from {', '.join(SCHEMES)}")
    floating = _fuse_for_int8(model)
    keep_float, sites = statistics_nodes(floating)
    return _quantize(floating, images, keep_float, options), keep_float, sites


def _float_island(site: Site) -> tuple[str, str]:
    """The cpu target's forms, except centred_conv, which would take the Conv before the norm
    into the site and so out of INT8, and ln2d's native op, which ONNX Runtime's quantizer
    cannot run (it opens its sessions without ln2d's library)."""
    if site.status == "already_fused" and site.original != "native":
        return site.original, "int8: kept as it came, in float"
    return "reduce_div", "int8: its own arithmetic, in float"


def _fuse_for_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Sites not fused yet get float-island forms; sites ln2d fused before stay as they are."""
    try:
        return fuse_model(model, _float_island)[0]
    except FusionError as exc:
        raise UserError(f"fusion before quantization failed: {exc}") from None


def _quantize(
    model: onnx.ModelProto, images: np.ndarray, keep_float: list[str], options: QuantizeOptions
) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "float.onnx", Path(scratch) / "int8.onnx"
        # Shapes inferred ahead, as the quantizer asks; no graph optimization, which would
        # rename the site nodes that must stay in float.
        quant_pre_process(model, source, skip_optimization=True, skip_symbolic_shape=True)
        scheme = SCHEMES[options.scheme]
        quantize_static(
            source,
            target,
            _Calibration(model.graph.input[0].name, images, options.progress),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=scheme.weights,
            reduce_range=scheme.reduce_range,
            per_channel=options.per_channel,
            nodes_to_exclude=keep_float,
        )
        return onnx.load(target)


class _Calibration(CalibrationDataReader):
    """The calibration images in batches, with a progress bar."""

    def __init__(self, input_name: str, images: np.ndarray, progress: bool) -> None:
        self._batches = self._iterate(input_name, images, progress)

    @staticmethod
    def _iterate(name: str, images: np.ndarray, progress: bool) -> Iterator[dict[str, np.ndarray]]:
        starts = range(0, len(images), CALIBRATION_BATCH)
        for start in tqdm(starts, desc="calibrate", unit="batch", disable=not progress):
            yield {name: images[start : start + CALIBRATION_BATCH].astype(np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
        open_session(model)
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise UserError(f"the quantized model is not valid: {' '.join(str(exc).split())}") from None


def _logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = open_session(model)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + 64]})[0] for i in range(0, len(images), 64)]
    )
