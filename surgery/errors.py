"""Typed errors: each says what happened, where (file, field, tensor or model) and how to fix it.

The CLI prints them without a traceback and exits 2; anything else is an internal error (exit 1).
"""

from __future__ import annotations


class SurgeryError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class SpecError(SurgeryError):
    """A spec (or flag) that does not validate; the message is `file: field.path (line N): problem`, the
    line where the YAML text is known (`file: line N: problem` for one that is not YAML)."""

    def __init__(self, file: str, field: str, problem: str, line: int | None = None):
        self.file, self.field, self.problem, self.line = file, field, problem, line
        at = f" (line {line})" if line and field else f"line {line}" if line else ""
        where = f"{file}: {field}{at}" if field else f"{file}: {at}" if at else file
        super().__init__(f"{where}: {problem}")


class InputError(SurgeryError):
    """A model folder or checkpoint file that is missing, corrupt or incompatible."""


class IncompatibleInput(SpecError, InputError):
    """A model folder named by a spec field that does not fit the others (another architecture,
    vocabulary or tokenizer): an InputError, located as a SpecError is (`file: field.path: problem`)."""


class OutputError(SurgeryError):
    """The output path cannot be written (exists, equals an input, disk full)."""


class NumericsError(SurgeryError):
    """A merge produced NaN or Inf; nothing is written."""


class SurgeryWarning(UserWarning):
    """Something the user should know that does not stop the work (a stale lock taken over, a method's
    fallback); the CLI prints it as one `warning: ...` line."""
