"""Static INT8 quantization (QDQ) with every LayerNorm2d kept in float.

    fuse (cpu forms, but no centred_conv) -> calibrate on real images -> quantize_static (QDQ,
    nodes of every site excluded) -> checker + ONNX Runtime load -> accuracy against fp32

A quantizer that puts Q/DQ pairs inside a norm rounds its mean and variance to 8 bits and
wrecks its precision. The sites' statistics nodes (``fusion.site_nodes``) are left out of
quantization: the norm reads the dequantized input and computes in float.
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

from ln2d.errors import UserError
from ln2d.export import metadata
from ln2d.export.fusion import Site, fuse_model
from ln2d.export.fusion.site_nodes import statistics_nodes
from ln2d.export.fusion.verify import FusionError
from ln2d.export.onnx_io import load_model, save_model
from ln2d.metadata import ModelMetadata
from ln2d.runtime import open_session

CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class QuantizeOptions:
    calibrate: str = "digits"  # "digits" or an image folder
    samples: int = 256
    per_channel: bool = False
    progress: bool = True


@dataclass(frozen=True)
class QuantizeReport:
    model: str
    output: str
    calibration: str
    calibration_samples: int
    evaluation_samples: int
    per_channel: bool
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
                f"quantized {self.model} -> {self.output} (QDQ, int8, "
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
                "per_channel": options.per_channel,
                "calibration": options.calibrate,
                "calibration_samples": len(calibration),
                "float_sites": sites,
            }
        ),
    )
    _check(quantized)
    save_model(quantized, output)
    fp32, int8 = (_logits(m, images[evaluation]) for m in (source, quantized))
    truth = labels[evaluation] if labels is not None else None
    return QuantizeReport(
        model=str(model_path),
        output=str(output),
        calibration=options.calibrate,
        calibration_samples=len(calibration),
        evaluation_samples=len(evaluation),
        per_channel=options.per_channel,
        float_sites=len(sites),
        float_nodes=len(keep_float),
        accuracy_fp32=None if truth is None else float((fp32.argmax(1) == truth).mean()),
        accuracy_int8=None if truth is None else float((int8.argmax(1) == truth).mean()),
        top1_agreement=float((fp32.argmax(1) == int8.argmax(1)).mean()),
    )


def quantize_model(
    model: onnx.ModelProto, images: np.ndarray, options: QuantizeOptions
) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """The INT8 model calibrated on ``images``, the nodes left in float and their sites.
    Fuses first."""
    floating = _fuse_for_int8(model)
    keep_float, sites = statistics_nodes(floating)
    return _quantize(floating, images, keep_float, options), keep_float, sites


def _float_island(site: Site) -> tuple[str, str]:
    """The cpu target's forms, except centred_conv, which would take the Conv before the norm
    into the site and so out of INT8."""
    if site.status == "already_fused":
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
        quantize_static(
            source,
            target,
            _Calibration(model.graph.input[0].name, images, options.progress),
            quant_format=QuantFormat.QDQ,
            # uint8 activations with int8 weights: on x86 ONNX Runtime fuses only this pairing
            # into QLinearConv here; with int8 activations it ran float Convs between Q/DQ
            # pairs, 1.5x slower than fp32 on the ConvNeXt-atto-like network.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
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
