"""``ln2d.*`` metadata in an ONNX file: the schema is ``ln2d.metadata.ModelMetadata``; this
reads it from and writes it into an onnx.ModelProto."""

from __future__ import annotations

import onnx

from ln2d.metadata import PREFIX, ModelMetadata


def write(model: onnx.ModelProto, values: ModelMetadata) -> None:
    """Set the entries ``values`` carries, replacing the model's entries of the same keys."""
    props = values.to_props()
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, text in props.items():
        model.metadata_props.add(key=key, value=text)


def read(model: onnx.ModelProto) -> ModelMetadata:
    return ModelMetadata.from_props(
        {p.key: p.value for p in model.metadata_props if p.key.startswith(PREFIX)}
    )
