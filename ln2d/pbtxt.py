"""Protobuf text format (Triton's ``config.pbtxt``) to and from plain nested dicts, without the
schema: ``ln2d triton-repo`` writes it, and ``ln2d serve`` reads a repository's configs with
neither protobuf nor tritonclient installed.

A message is a dict; a field that occurs once holds its value, a repeated one (or a ``[...]``
list) a list. Scalars stay as written: strings unquoted, numbers as int or float, enum names
and booleans as bare words (str). The tests hold both directions to Triton's own
``ModelConfig`` protobuf.
"""

from __future__ import annotations

import ast
import json
import re

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*                      # blanks and comments
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<punct>[{}\[\]:,;<>])
    |(?P<word>[^\s{}\[\]:,;<>\#"']+)""",
    re.VERBOSE,
)
_CLOSE = {"{": "}", "<": ">"}


class PbtxtError(ValueError):
    """Text that is not protobuf text format (within what this reader knows)."""


def render(message: dict, indent: int = 0) -> str:
    """Text format for nested dicts/lists of str, int and enum names (UPPER_CASE)."""
    pad = "  " * indent
    lines = []
    for key, value in message.items():
        for item in value if isinstance(value, list) and _is_messages(value) else [value]:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{\n{render(item, indent + 1)}{pad}}}\n")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}\n")
    return "".join(lines)


def parse(text: str) -> dict:
    """The message in ``text``; PbtxtError names the line of the first thing it cannot read."""
    tokens = _tokens(text)
    message = _message(tokens, 0, end=None)
    return message[0]


def as_list(value: object) -> list:
    """A field's values as a list: without the schema, one occurrence of a repeated field
    reads as a single value."""
    return value if isinstance(value, list) else [value]


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) for every token; kind is string, punct or word."""
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            line = text.count("\n", 0, position) + 1
            raise PbtxtError(f"line {line}: cannot read {text[position : position + 20]!r}")
        if match.lastgroup is not None:
            line = text.count("\n", 0, position) + 1
            tokens.append((match.lastgroup, match.group(), line))
        position = match.end()
    return tokens


def _message(tokens: list, at: int, end: str | None) -> tuple[dict, int]:
    fields: dict = {}
    while at < len(tokens):
        kind, text, line = tokens[at]
        if end is not None and text == end and kind == "punct":
            return fields, at + 1
        if kind != "word":
            raise PbtxtError(f"line {line}: expected a field name, found {text!r}")
        at += 1
        if _is(tokens, at, ":"):
            at += 1
        value, at = _value(tokens, at, line)
        _add(fields, text, value)
        if _is(tokens, at, ",") or _is(tokens, at, ";"):
            at += 1
    if end is not None:
        raise PbtxtError(f"the text ends before a closing {end!r}")
    return fields, at


def _value(tokens: list, at: int, line: int) -> tuple[object, int]:
    if at >= len(tokens):
        raise PbtxtError(f"line {line}: a field without a value")
    kind, text, line = tokens[at]
    if kind == "punct" and text in _CLOSE:
        return _message(tokens, at + 1, _CLOSE[text])
    if kind == "punct" and text == "[":
        return _list(tokens, at + 1, line)
    if kind == "punct":
        raise PbtxtError(f"line {line}: expected a value, found {text!r}")
    return _scalar_value(kind, text), at + 1


def _list(tokens: list, at: int, line: int) -> tuple[list, int]:
    items: list = []
    while not _is(tokens, at, "]"):
        item, at = _value(tokens, at, line)
        items.append(item)
        if _is(tokens, at, ","):
            at += 1
        elif not _is(tokens, at, "]"):
            raise PbtxtError(f"line {line}: a list without its closing ']'")
    return items, at + 1


def _scalar_value(kind: str, text: str) -> object:
    if kind == "string":
        return ast.literal_eval(text)
    for number in (int, float):
        try:
            return number(text, 0) if number is int else number(text)
        except ValueError:
            continue
    return text


def _add(fields: dict, name: str, value: object) -> None:
    if name not in fields:
        fields[name] = value
    elif isinstance(fields[name], list) and not isinstance(value, list):
        fields[name].append(value)
    else:
        previous = fields[name]
        fields[name] = [*(previous if isinstance(previous, list) else [previous]), value]


def _is(tokens: list, at: int, punct: str) -> bool:
    return at < len(tokens) and tokens[at][0] == "punct" and tokens[at][1] == punct


def _is_messages(values: list) -> bool:
    return bool(values) and all(isinstance(v, dict) for v in values)


def _scalar(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, str) and not re.fullmatch(r"[A-Z][A-Z0-9_]*", value):
        return json.dumps(value)  # a string; enum names stay bare
    return str(value)
