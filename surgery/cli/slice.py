"""`surgery slice IN OUT --layers 0:4,2:6`."""

from __future__ import annotations

import click

from surgery.cli.common import handled
from surgery.cli.streamed import output_options, write_plan


@click.command(name="slice")
@click.argument("src", metavar="IN", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--layers", required=True, help="Layer ranges START:END (END excluded), in output order; "
              "repeat or overlap to duplicate layers, leave out to drop them. E.g. 0:4,2:6.")
@output_options
@handled
def slice_(src, out, layers, shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Write the model folder IN to OUT keeping, dropping or repeating ranges of its layers."""
    from surgery.ops.layer_slice import plan_slice

    plan = plan_slice(src, layers, allow_pickle=allow_pickle)
    write_plan(plan, out, shard_size, block_size, force, quiet, "slice")
