"""`surgery demo FOLDER`."""

from __future__ import annotations

import click

from surgery.cli.common import handled


@click.command()
@click.argument("folder", type=click.Path(), default="demo")
@click.option("--specs", type=click.Path(file_okay=False, exists=True),
              help="Run every *.yaml here (e.g. merges/) instead of the built-in TIES spec.")
@handled
def demo(folder, specs) -> None:
    """Build small models in FOLDER, merge them, load each result and score it on a sentence."""
    from surgery.demo.untrained import run_demo

    run_demo(folder, specs, echo=click.echo)
