"""`surgery fold BASE ADAPTER [ADAPTER ...] OUT`."""

from __future__ import annotations

import click

from surgery.cli.common import handled
from surgery.cli.streamed import dtype_option, output_options, write_plan


@click.command()
@click.argument("base", type=click.Path())
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--weight", "weights", type=float, multiple=True,
              help="Scale of each adapter's delta, once per adapter in order (default 1; LoRA and VeRA only).")
@dtype_option("Output dtype (default: the base's).")
@output_options
@handled
def fold(base, adapters, out, weights, dtype, shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Fold PEFT adapters (LoRA, DoRA, IA3, VeRA) into BASE, in order, and write the model to OUT."""
    from surgery.adapters.fold_plan import plan_fold

    plan = plan_fold(base, adapters, weights, out_dtype=dtype, allow_pickle=allow_pickle)
    write_plan(plan, out, shard_size, block_size, force, quiet, "fold")
