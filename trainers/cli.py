"""`surgery train RUN.yaml [--set field.path=value ...] [--resume FOLDER]`, also `python -m trainers`."""

from __future__ import annotations

import os
import signal
import sys

import click

from surgery.cli.common import handled, interrupt


@click.command()
@click.argument("run_spec", metavar="RUN.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field before validation, e.g. --set optim.lr=3e-4 (repeatable).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue from a checkpoint-N folder of this run.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@handled
def train(run_spec, overrides, resume, quiet) -> None:
    """Train a model as RUN.yaml says (objective, method, data, schedule); writes OUT/checkpoint-N and OUT/final.

    Under torchrun (`torchrun --nproc-per-node 2 -m trainers RUN.yaml`) each process takes its share
    of every step's rows.
    """
    from trainers.loop import train as run_training
    from trainers.spec import load_run

    signal.signal(signal.SIGTERM, interrupt)  # a killed run leaves its last good checkpoint, no partial one
    run = load_run(run_spec, tuple(overrides))
    try:
        final = run_training(run, resume=resume, quiet=quiet)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the checkpoints already in {run.spec.out} are complete; continue with "
                   "--resume OUT/checkpoint-N", err=True)
        sys.exit(130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole run
        click.echo(f"wrote {final}")
