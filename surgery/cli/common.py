"""What every command shares: error handling (exit 0 success, 2 bad spec or input with a located
message and no traceback, 1 internal error), sizes like 5G, and SIGTERM handled as Ctrl-C."""

from __future__ import annotations

import sys
import traceback
import warnings
from functools import wraps

import click

from surgery.cli.third_party import quiet_third_party
from surgery.errors import SurgeryError, SurgeryWarning

SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "B": 1024**3}


def parse_size(text: str) -> int:
    """'5G', '500M', '1024' -> bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B") or "0"
    if text[-1] in SIZE_UNITS:
        return int(float(text[:-1]) * SIZE_UNITS[text[-1]])
    return int(text)


def size_option(ctx, param, value):
    try:
        return parse_size(value)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{value!r} is not a size; write e.g. 5G, 500M or 1048576") from None


def overrides_option(example: str):
    """`--set FIELD=VALUE` (repeatable), given to the command as `overrides`: a spec field replaced before
    validation; `example` is one such override for the help text."""
    return click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
                        help=f"Override a spec field before validation, e.g. --set {example} (repeatable).")


def handled(fn):
    """Print SurgeryErrors plainly (exit 2); other exceptions are bugs (exit 1, traceback with --debug).
    SurgeryWarnings are printed as `warning: ...` lines, each time they occur."""
    @wraps(fn)
    def run(*args, debug: bool = False, **kwargs):
        try:
            with warnings.catch_warnings():
                quiet_third_party()  # messages of libraries a user cannot act on
                warnings.simplefilter("always", SurgeryWarning)
                warnings.showwarning = _show
                return fn(*args, **kwargs)
        except SurgeryError as e:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written at the output path", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - the last resort of a CLI
            if debug:
                traceback.print_exc()
            else:
                click.echo(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
            sys.exit(1)
    return click.option("--debug", is_flag=True, help="Show tracebacks.")(run)


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, SurgeryWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_show(message, category, filename, lineno, file, line)


_python_show = warnings.showwarning


def interrupt(signum, frame) -> None:
    """SIGTERM handler: unwind as Ctrl-C does, so partial outputs are removed."""
    raise KeyboardInterrupt
