"""The one exception type the CLI turns into a readable line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: a missing or corrupt file, a wrong flag, a shape mismatch."""
