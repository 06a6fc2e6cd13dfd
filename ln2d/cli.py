"""The ``ln2d`` command: a dispatcher over subcommands that packages register as entry points.

Each package (``ln2d``, ``export``, ``serve``) lists its subcommands under the ``ln2d.commands``
entry-point group, so this module depends on none of them, and a serving install without torch
still gets ``ln2d serve``. Exit codes: 0 success, 1 a check failed (parity, the fusion gate),
2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from ln2d import __version__
from ln2d.errors import CheckFailed, UserError

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


def int_list(text: str) -> tuple[int, ...]:
    """argparse type for "32,64,128", shared by every package's commands."""
    return tuple(int(v) for v in text.split(","))


class _Parser(argparse.ArgumentParser):
    """Says, with an unknown command, which packages' commands are missing and why."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.missing: dict[str, str] = {}  # entry-point name (= its extra) -> module it lacks

    def error(self, message: str) -> NoReturn:
        if self.missing and "invalid choice" in message:
            message += "; not installed: " + ", ".join(
                f"the {name} commands (no module {module!r}: pip install 'ln2d[{name}]')"
                for name, module in self.missing.items()
            )
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ln2d",
        description="LayerNorm2d CNNs: train, export to fused ONNX, check parity, serve.",
    )
    parser.add_argument("--version", action="version", version=f"ln2d {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # One package's missing extra (no pydantic in an export-only install) must not take the
    # other packages' commands down with it.
    for entry in sorted(entry_points(group="ln2d.commands"), key=lambda e: e.name):
        try:
            entry.load()(commands)
        except ModuleNotFoundError as exc:
            parser.missing[entry.name] = exc.name
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"ln2d {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_CHECK_FAILED if isinstance(exc, CheckFailed) else EXIT_BAD_INPUT
    except ModuleNotFoundError as exc:
        print(
            f"ln2d {args.command}: error: missing module {exc.name!r}; install the extra "
            f"this command needs: pip install 'ln2d[{args.extra}]'",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"ln2d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
