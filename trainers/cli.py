"""`surgery train RUN.yaml [--set field.path=value ...] [--resume FOLDER]` (also `python -m trainers`), and
`surgery world FOLDER`, the small world's trained demo, and `surgery label LABEL.yaml` (RLAIF preference labels)."""

from __future__ import annotations

import os
import signal
import sys
import warnings

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
    from trainers.loops import train as run_training
    from trainers.spec import load_run

    signal.signal(signal.SIGTERM, interrupt)  # a killed run leaves its last good checkpoint, no partial one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FutureWarning)  # a deprecated spec field, located in the spec
        run = load_run(run_spec, tuple(overrides))
    for w in caught:
        if w.category is FutureWarning:
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    try:
        final = run_training(run, resume=resume, quiet=quiet)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the checkpoints already in {run.spec.out} are complete; continue with "
                   "--resume OUT/checkpoint-N", err=True)
        sys.exit(130)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the whole run
        click.echo(f"wrote {final}")


@click.command()
@click.argument("folder", type=click.Path(file_okay=False), default="demo")
@click.option("--specs", type=click.Path(file_okay=False, exists=True), default="merges", show_default=True,
              help="Merge specs to run on the trained experts (their models are models/base, add, reverse, refuse).")
@click.option("--base-steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Pretraining steps of the base.")
@click.option("--expert-steps", type=click.IntRange(min=1), default=200, show_default=True,
              help="Fine-tuning steps of each expert.")
@handled
def world(folder, specs, base_steps, expert_steps) -> None:
    """Train the small world's base and task experts in FOLDER/models (kept between runs), merge the
    experts with every spec in SPECS, and print each model's exact match on every task."""
    from trainers.world.demo import run_world_demo

    run_world_demo(folder, specs, base_steps, expert_steps, echo=click.echo)


@click.command()
@click.argument("label_spec", metavar="LABEL.yaml", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Override a spec field before validation, e.g. --set policy=demo/models/base (repeatable).")
@handled
def label(label_spec, overrides) -> None:
    """RLAIF labels: sample two answers per prompt from the policy, let the judge of LABEL.yaml (reward
    model, LM or rule) pick one, and write the pairs as preference JSONL (prompt/chosen/rejected)."""
    from trainers.judges import label as run_label
    from trainers.judges import load_label_spec

    spec = load_label_spec(label_spec, tuple(overrides))
    counts = run_label(spec, label_spec)
    click.echo(f"wrote {spec.out}: {counts['pairs']} pairs from {counts['prompts']} prompts "
               f"({counts['skipped']} ties or equal answers skipped)")
