"""`surgery fold BASE ADAPTER [ADAPTER ...] OUT`."""

from __future__ import annotations

import signal

import click

from surgery.cli.common import handled, interrupt, size_option


@click.command()
@click.argument("base", type=click.Path())
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--weight", "weights", type=float, multiple=True,
              help="Scale of each adapter's delta, once per adapter in order (default 1; LoRA and VeRA only).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "float64"]), help="Output dtype (default: the base's).")
@click.option("--shard-size", default="5G", callback=size_option, help="Largest output shard, e.g. 5G or 500M.")
@click.option("--block-size", default="16M", callback=size_option, help="Working memory of one block of rows.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never the base or an adapter).")
@click.option("--allow-pickle", is_flag=True, help="Accept a pytorch_model.bin base (loaded with weights_only=True).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def fold(base, adapters, out, weights, dtype, shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Fold PEFT adapters (LoRA, DoRA, IA3, VeRA) into BASE, in order, and write the model to OUT."""
    import torch

    from surgery.adapters.fold_plan import plan_fold
    from surgery.allocator import keep_freed_memory
    from surgery.engine import Options, arithmetic_threads, run_merge
    from surgery.progress import Bar

    plan = plan_fold(base, adapters, weights, out_dtype=dtype, allow_pickle=allow_pickle)
    options = Options(shard_size=shard_size, block_bytes=block_size, force=force)
    keep_freed_memory()
    torch.set_num_threads(arithmetic_threads())
    signal.signal(signal.SIGTERM, interrupt)  # clean up the partial output on `kill` as on Ctrl-C
    with Bar(plan.write_bytes, len(plan.jobs), disable=quiet) as bar:
        path = run_merge(plan, out, options, progress=bar.update)
    click.echo(f"wrote {path}")
