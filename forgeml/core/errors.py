"""User-facing errors: one clear line of what went wrong and what to do.

The CLI prints a `ForgeError` as a single line (no traceback unless `--debug`);
anything else is a bug and is shown with its traceback.
"""

from __future__ import annotations


class ForgeError(Exception):
    """An error the user caused and can fix; `hint` says how."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(ForgeError):
    """A recipe or override is invalid."""


class NotFoundError(ForgeError):
    """A file, asset, run or alias does not exist."""


class DataError(ForgeError):
    """Input data cannot be used (empty folder, nothing readable, ...)."""
