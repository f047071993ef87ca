"""What the writing commands share: the output flags of `merge`, `fold`, `convert`, `slice` and
`rename` (declared once here: `output_options`, `dtype_option`), and running a plan through the merge
engine with a progress bar (streamed, atomic, inputs never touched)."""

from __future__ import annotations

import signal

import click

from surgery.cli.common import interrupt, size_option


def output_options(fn):
    """--shard-size, --block-size, --force, --allow-pickle, --quiet."""
    for option in reversed([
        click.option("--shard-size", default="5G", callback=size_option, help="Largest output shard, e.g. 5G or 500M."),
        click.option("--block-size", default="16M", callback=size_option,
                     help="Working memory of one block of rows, all inputs together."),
        click.option("--force", is_flag=True, help="Replace OUT if it exists (never an input)."),
        click.option("--allow-pickle", is_flag=True,
                     help="Accept pytorch_model.bin inputs (loaded with weights_only=True)."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]):
        fn = option(fn)
    return fn


def dtype_option(help: str, required: bool = False):
    """--dtype, one of the dtypes a spec's `dtype` and `out_dtype` take."""
    from surgery.merge.spec import DTYPE_NAMES

    return click.option("--dtype", type=click.Choice(DTYPE_NAMES), required=required, help=help)


def write_plan(plan, out: str, shard_size: int, block_size: int, force: bool, quiet: bool, desc: str) -> None:
    from surgery.merge.engine import Options

    run_plan(plan, out, Options(shard_size=shard_size, block_bytes=block_size, force=force), quiet, desc)


def run_plan(plan, out: str, options, quiet: bool, desc: str = "merge", threads: int | None = None) -> None:
    """Run `plan` into OUT with a progress bar, as every writing command does: freed block buffers kept
    for reuse, torch threads set, SIGTERM unwinding as Ctrl-C (the partial output is removed)."""
    import torch

    from surgery.io.allocator import keep_freed_memory
    from surgery.merge.engine import arithmetic_threads, run_merge
    from surgery.merge.progress import Bar

    keep_freed_memory()  # reuse block buffers instead of faulting fresh pages in for every block
    torch.set_num_threads(arithmetic_threads(threads))
    signal.signal(signal.SIGTERM, interrupt)
    with Bar(plan.write_bytes, len(plan.jobs), disable=quiet, desc=desc) as bar:
        path = run_merge(plan, out, options, progress=bar.update)
    click.echo(f"wrote {path}")
