"""`surgery convert IN OUT --dtype bfloat16`."""

from __future__ import annotations

import click

from surgery.cli.common import handled
from surgery.cli.streamed import dtype_option, output_options, write_plan


@click.command()
@click.argument("src", metavar="IN", type=click.Path())
@click.argument("out", type=click.Path())
@dtype_option("dtype of every floating-point tensor in OUT (integer buffers are copied as they are).", required=True)
@output_options
@handled
def convert(src, out, dtype, shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Write the model folder IN to OUT with its floating-point tensors cast to --dtype."""
    from surgery.ops.convert import plan_convert

    plan = plan_convert(src, dtype, allow_pickle=allow_pickle)
    write_plan(plan, out, shard_size, block_size, force, quiet, "convert")
