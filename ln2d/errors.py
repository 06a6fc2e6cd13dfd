"""The one exception type the CLI turns into a readable line and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """Bad input from the user: a missing or corrupt file, a wrong flag, a shape mismatch."""


class CheckFailed(UserError):
    """A check the command exists to make did not pass (exit 1, not 2): nothing was written."""


@contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Create ``path``'s folder, and turn a failed write into one readable line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield path
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc
