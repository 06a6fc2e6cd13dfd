"""The ONNX ``metadata_props`` that ln2d writes, and that the server reads (by these keys).

Every value is a string; structured values are JSON. The README ("Export, fusion and parity")
lists the keys for users.
"""

from __future__ import annotations

import json

import onnx

from ln2d.constants import METADATA_KEYS, METADATA_PREFIX

PREFIX, KEYS = METADATA_PREFIX, METADATA_KEYS


def write(model: onnx.ModelProto, values: dict[str, object]) -> None:
    """Set ``ln2d.<key>`` entries, replacing old ones; non-strings are stored as JSON."""
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown metadata keys {sorted(unknown)}")
    keep = [p for p in model.metadata_props if p.key.removeprefix(PREFIX) not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        text = value if isinstance(value, str) else json.dumps(value)
        model.metadata_props.add(key=PREFIX + key, value=text)


def read(model: onnx.ModelProto) -> dict[str, str]:
    """The ``ln2d.<key>`` entries, by key without the prefix; values as stored (strings)."""
    return {
        p.key.removeprefix(PREFIX): p.value
        for p in model.metadata_props
        if p.key.startswith(PREFIX)
    }
