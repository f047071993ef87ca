"""`surgery inspect PATH`."""

from __future__ import annotations

import click

from surgery.cli.common import handled


@click.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--tensors/--no-tensors", default=True, help="List every tensor.")
@click.option("--allow-pickle", is_flag=True, help="Accept pytorch_model.bin checkpoints.")
@handled
def inspect(path, as_json, tensors, allow_pickle) -> None:
    """Tensors, shapes, dtypes, parameter count and provenance of a model folder."""
    from surgery.diagnose.inspect import inspect_folder
    from surgery.diagnose.report import describe_inspection

    report = inspect_folder(path, allow_pickle=allow_pickle)
    click.echo(report.as_json() if as_json else describe_inspection(report, tensors))
