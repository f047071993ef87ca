"""`surgery continual SEQ.yaml` (a training sequence, every stage scored into the results store), its
small-world proof `surgery continual-proof OUT`, and `surgery safety-curve OUT` (refusal, over-refusal and
alignment tax along the safety data's mixing weight)."""

from __future__ import annotations

import signal
import sys

import click

from evals.cli import SCORING, db_option, table_format_option
from surgery.cli.common import handled, interrupt


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.argument("spec", metavar="SEQ.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field before validation, e.g. --set strategy.lam=100 (repeatable).")
@SCORING["limit"]
@SCORING["batch_size"]
@SCORING["device"]
@db_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@table_format_option
@handled
def continual(spec, overrides, limit, batch_size, device, db, quiet, fmt) -> None:
    """Train a sequence of stages with a continual-learning strategy (naive, ewc, replay, adapters), scoring
    the base and each stage's model on every stage's tasks as it is written; prints the stage x task
    matrix with GEM's and RWalk's measures. Run it again to continue a sequence that stopped."""
    from evals.pipelines.continual import check_scoring_tasks, run_continual
    from evals.report.tables import render, render_forgetting
    from evals.scoring.harness import HarnessSettings
    from evals.scoring.store import Store
    from surgery.io.output import output_lock
    from trainers.continual.spec import load_plan

    plan = load_plan(spec, tuple(overrides))
    check_scoring_tasks(plan)
    settings = HarnessSettings(limit=limit, device=device, batch_size=int(batch_size) if batch_size.isdigit()
                               else batch_size)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        with output_lock(plan.out), Store(db) as store:
            scored = run_continual(plan, settings, store, _say, quiet)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the finished stages and checkpoints in {plan.out} are kept; run the same "
                   "command again to continue", err=True)
        sys.exit(130)
    click.echo(render_forgetting(scored.report, fmt))
    for name, folder in scored.done.extras.items():
        rows = [{"task": t, "score": s.value} for t, s in scored.table[folder].items()]
        click.echo(f"\n{name} ({folder})\n" + render(rows, fmt).rstrip("\n"))
    click.echo(f"stage x task scores stored; read them again with: surgery forgetting {plan.out}", err=True)
