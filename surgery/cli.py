"""The `surgery` command line. Commands are thin: they parse flags, call the library, print.
Exit codes: 0 success, 2 bad spec or input (a located message, no traceback), 1 internal error."""

from __future__ import annotations

import signal
import sys
import traceback
from functools import wraps

import click

from surgery import __version__
from surgery.errors import SurgeryError

SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "B": 1024**3}


def parse_size(text: str) -> int:
    """'5G', '500M', '1024' -> bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B") or "0"
    if text[-1] in SIZE_UNITS:
        return int(float(text[:-1]) * SIZE_UNITS[text[-1]])
    return int(text)


def _size(ctx, param, value):
    try:
        return parse_size(value)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{value!r} is not a size; write e.g. 5G, 500M or 1048576") from None


def handled(fn):
    """Print SurgeryErrors plainly (exit 2); other exceptions are bugs (exit 1, traceback with --debug)."""
    @wraps(fn)
    def run(*args, debug: bool = False, **kwargs):
        try:
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


@click.group()
@click.version_option(__version__, prog_name="surgery")
def main() -> None:
    """Merge and operate on open-weight causal LM checkpoints."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path())
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "float64"]), help="Output dtype (overrides the spec's out_dtype/dtype).")
@click.option("--shard-size", default="5G", callback=_size, help="Largest output shard, e.g. 5G or 500M.")
@click.option("--block-size", default="16M", callback=_size, help="Working memory of one block of rows, all inputs together.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", help="Where the arithmetic runs.")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; read no tensor data, write nothing.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never an input model).")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin inputs (loaded with weights_only=True).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Read relative model paths from here (default: the current folder).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def merge(spec, out, dtype, shard_size, block_size, device, dry_run, force, allow_pickle, models_dir, quiet) -> None:
    """Merge the models of SPEC (a mergekit-style YAML) into the folder OUT."""
    from surgery.allocator import keep_freed_memory
    from surgery.engine import Options, run_merge
    from surgery.plan import plan_merge
    from surgery.progress import Bar
    from surgery.report import describe_plan
    from surgery.spec import load_spec

    if device == "cuda":
        _require_cuda()
    plan = plan_merge(load_spec(spec), spec, out_dtype=dtype, allow_pickle=allow_pickle, models_dir=models_dir)
    options = Options(shard_size=shard_size, block_bytes=block_size, device=device, force=force)
    if dry_run:
        click.echo(describe_plan(plan, options))
        return
    keep_freed_memory()  # reuse block buffers instead of faulting fresh pages in for every block
    signal.signal(signal.SIGTERM, _interrupt)  # clean up the partial output on `kill` as on Ctrl-C
    with Bar(plan.write_bytes, len(plan.jobs), disable=quiet) as bar:
        path = run_merge(plan, out, options, progress=bar.update)
    click.echo(f"wrote {path}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _require_cuda() -> None:
    import torch

    from surgery.errors import InputError

    if not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible to torch; use --device cpu")


@main.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tensors/--no-tensors", default=True, help="List every tensor.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin checkpoints.")
@handled
def inspect(path, as_json, tensors, allow_pickle) -> None:
    """Tensors, shapes, dtypes, parameter count and provenance of a model folder."""
    from surgery.inspect import inspect_folder
    from surgery.report import describe_inspection

    report = inspect_folder(path, allow_pickle=allow_pickle)
    click.echo(report.as_json() if as_json else describe_inspection(report, tensors))


@main.command()
@click.argument("folder", type=click.Path(), default="demo")
@click.option("--specs", type=click.Path(file_okay=False, exists=True), help="Run every *.yaml here (e.g. merges/) instead of the built-in TIES spec.")
@handled
def demo(folder, specs) -> None:
    """Build small models in FOLDER, merge them, load each result and score it on a sentence."""
    from surgery.demo import run_demo

    run_demo(folder, specs, echo=click.echo)


if __name__ == "__main__":
    main()
