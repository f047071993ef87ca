"""What `convert`, `slice` and `rename` share: the output flags, and running their plan through the
merge engine with a progress bar (streamed, atomic, inputs never touched)."""

from __future__ import annotations

import signal

import click

from surgery.cli.common import interrupt, size_option


def output_options(fn):
    """--shard-size, --block-size, --force, --allow-pickle, --quiet."""
    for option in reversed([
        click.option("--shard-size", default="5G", callback=size_option, help="Largest output shard, e.g. 5G or 500M."),
        click.option("--block-size", default="16M", callback=size_option, help="Working memory of one block of rows."),
        click.option("--force", is_flag=True, help="Replace OUT if it exists (never the input)."),
        click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin input (loaded with weights_only=True)."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]):
        fn = option(fn)
    return fn


def write_plan(plan, out: str, shard_size: int, block_size: int, force: bool, quiet: bool, desc: str) -> None:
    import torch

    from surgery.engine import Options, arithmetic_threads, run_merge
    from surgery.progress import Bar

    torch.set_num_threads(arithmetic_threads())

    signal.signal(signal.SIGTERM, interrupt)  # clean up the partial output on `kill` as on Ctrl-C
    options = Options(shard_size=shard_size, block_bytes=block_size, force=force)
    with Bar(plan.write_bytes, len(plan.jobs), disable=quiet, desc=desc) as bar:
        path = run_merge(plan, out, options, progress=bar.update)
    click.echo(f"wrote {path}")
