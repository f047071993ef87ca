"""`surgery convert IN OUT --dtype bfloat16`."""

from __future__ import annotations

import click

from surgery.cli.common import handled
from surgery.cli.streamed import output_options, write_plan


@click.command()
@click.argument("src", metavar="IN", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--dtype", required=True, type=click.Choice(["float32", "float16", "bfloat16", "float64"]),
              help="dtype of every floating-point tensor in OUT (integer buffers are copied as they are).")
@output_options
@handled
def convert(src, out, dtype, shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Write the model folder IN to OUT with its floating-point tensors cast to --dtype."""
    from surgery.ops.convert import plan_convert

    plan = plan_convert(src, dtype, allow_pickle=allow_pickle)
    write_plan(plan, out, shard_size, block_size, force, quiet, "convert")
