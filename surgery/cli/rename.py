"""`surgery rename IN OUT --map 'REGEX=REPLACEMENT' ...`."""

from __future__ import annotations

import click

from surgery.cli.common import handled
from surgery.cli.streamed import output_options, write_plan


@click.command()
@click.argument("src", metavar="IN", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--map", "maps", multiple=True, required=True, metavar="REGEX=REPLACEMENT",
              help="Rename tensors matching REGEX (re.sub, \\1 for groups); repeat to apply several in order.")
@output_options
@handled
def rename(src, out, maps, shard_size, block_size, force, allow_pickle, quiet) -> None:
    """Write the model folder IN to OUT with tensors renamed; values and dtypes are unchanged."""
    from surgery.ops.rename import plan_rename

    plan = plan_rename(src, list(maps), allow_pickle=allow_pickle)
    write_plan(plan, out, shard_size, block_size, force, quiet, "rename")
