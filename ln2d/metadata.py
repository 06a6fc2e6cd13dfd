"""What an ONNX model from ln2d carries for whoever serves or checks it: the ``ln2d.*`` entries
of its ``metadata_props``, in one typed schema.

``ModelMetadata.to_props`` writes the entries (strings; structured values as JSON) and
``from_props`` reads them back. Export, fusion, quantization and fp16 conversion write through
it; the server, parity, the tuner and ``ln2d triton-repo`` read through it. Torch-free and
onnx-free: the server reads the entries from ONNX Runtime's model metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields

from ln2d.parity_record import ParityRecord
from ln2d.preprocessing import SCALE

PREFIX = "ln2d."


class MetadataError(ValueError):
    """An ``ln2d.*`` entry that is not what the schema says."""


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the model's input: ``(pixels * scale - mean) / std`` per channel,
    at ``height`` x ``width``, NCHW."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = SCALE  # uint8 -> [0, 1]
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if min(self.channels, self.height, self.width) < 1:
            raise MetadataError(f"input sizes must be positive: {self}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise MetadataError("input mean and std need one value per channel")
        if min(self.std) <= 0:
            raise MetadataError("input std must be positive")

    @property
    def color(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def to_json(self) -> dict:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "color": self.color,
            "scale": self.scale,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> InputSpec:
        return cls(
            channels=int(data["channels"]),
            height=int(data["height"]),
            width=int(data["width"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            scale=float(data.get("scale", SCALE)),
            layout=str(data.get("layout", "NCHW")),
        )


@dataclass(frozen=True)
class ModelMetadata:
    """Every ``ln2d.*`` entry; None where a model does not carry it."""

    name: str | None = None  # the model's name for the server and the v2 protocol
    labels: tuple[str, ...] | None = None  # class names, in output order
    input: InputSpec | None = None
    architecture: dict | None = None  # the network's config, or its class
    eps: str | None = None  # the norm epsilon, as repr() wrote it
    version: str | None = None  # the ln2d version that wrote the file
    checkpoint_sha256: str | None = None  # of the checkpoint it came from
    fusion: dict | None = None  # the fusion summary: sites, forms, checks, tuning
    precision: dict | None = None  # reduced precision and how it was made; None: fp32
    requires: str | None = None  # the library a runtime must load: "ln2d.native"
    parity_record: ParityRecord | None = None  # inputs, outputs and tolerance, to replay

    @property
    def precision_name(self) -> str:
        return self.precision["precision"] if self.precision else "fp32"

    def to_props(self) -> dict[str, str]:
        """The entries this metadata sets, keyed with the prefix."""
        props = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, InputSpec | ParityRecord):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            props[PREFIX + field.name] = value if isinstance(value, str) else json.dumps(value)
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelMetadata:
        """The ``ln2d.*`` entries of ``props`` (others are ignored); MetadataError if one is
        malformed."""
        values = {}
        for field in fields(cls):
            text = props.get(PREFIX + field.name)
            if text is None:
                continue
            try:
                values[field.name] = _parse(field.name, text)
            except (ValueError, KeyError, TypeError) as exc:
                raise MetadataError(f"{PREFIX}{field.name} is malformed: {exc}") from exc
        return cls(**values)


KEYS = tuple(field.name for field in fields(ModelMetadata))
_TEXT = ("name", "eps", "version", "checkpoint_sha256", "requires")


def _parse(key: str, text: str):
    if key in _TEXT:
        return text
    value = json.loads(text)
    if key == "input":
        return InputSpec.from_json(value)
    if key == "parity_record":
        return ParityRecord.from_json(value)
    if key == "labels":
        if not isinstance(value, list):
            raise TypeError("labels must be a JSON list")
        return tuple(str(label) for label in value)
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a JSON object")
    if key == "precision" and "precision" not in value:
        raise KeyError("precision")
    return value
