"""`surgery fold BASE ADAPTER [ADAPTER ...] OUT`."""

from __future__ import annotations

import click

from surgery.cli.common import handled, size_option
from surgery.cli.streamed import run_plan


@click.command()
@click.argument("base", type=click.Path())
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--weight", "weights", type=float, multiple=True,
              help="Scale of each adapter's delta, once per adapter in order (default 1; LoRA and VeRA only).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "float64"]),
              help="Output dtype (default: the base's).")
@click.option("--shard-size", default="5G", callback=size_option, help="Largest output shard, e.g. 5G or 500M.")
@click.option("--block-size", default="16M", callback=size_option, help="Working memory of one block of rows.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists (never the base or an adapter).")
@click.option("--allow-pickle", is_flag=True, help="Accept a pytorch_model.bin base (loaded with weights_only=True).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def fold(base, adapters, out, weights, dtype, shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Fold PEFT adapters (LoRA, DoRA, IA3, VeRA) into BASE, in order, and write the model to OUT."""
    from surgery.adapters.fold_plan import plan_fold
    from surgery.merge.engine import Options

    plan = plan_fold(base, adapters, weights, out_dtype=dtype, allow_pickle=allow_pickle)
    run_plan(plan, out, Options(shard_size=shard_size, block_bytes=block_size, force=force), quiet)
