"""Typed errors: each says what happened, where (file, field, tensor or model) and how to fix it.

The CLI prints them without a traceback and exits 2; anything else is an internal error (exit 1).
"""

from __future__ import annotations


class SurgeryError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class SpecError(SurgeryError):
    """A merge spec that does not validate; the message is `file: field.path: problem`."""

    def __init__(self, file: str, field: str, problem: str):
        self.file, self.field, self.problem = file, field, problem
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {problem}")


class InputError(SurgeryError):
    """A model folder or checkpoint file that is missing, corrupt or incompatible."""


class OutputError(SurgeryError):
    """The output path cannot be written (exists, equals an input, disk full)."""


class NumericsError(SurgeryError):
    """A merge produced NaN or Inf; nothing is written."""


class SurgeryWarning(UserWarning):
    """Something the user should know that does not stop the work (a stale lock taken over, a method's
    fallback); the CLI prints it as one `warning: ...` line."""
