"""`surgery continual SEQ.yaml` (a training sequence, every stage scored into the results store), its
small-world proof `surgery continual-proof OUT`, `surgery safety-curve OUT` (refusal, over-refusal and
alignment tax along the safety data's mixing weight) and `surgery world DIR` (`make demo`: the whole loop)."""

from __future__ import annotations

import signal
import sys

import click

from evals.cli import SCORING, db_option, table_format_option
from surgery.cli.common import handled, interrupt, overrides_option


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@click.argument("spec", metavar="SEQ.yaml", type=click.Path(dir_okay=False))
@overrides_option("strategy.lam=100")
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


@click.command("continual-proof")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--zoo", type=click.Path(file_okay=False),
              help="A small-world models folder with base/ and data/ (DIR/models of `surgery world DIR`). "
                   "Default: the demo's base, which knows none of the three skills, built under OUT/zoo.")
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True, help="Training steps of each stage.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=3e-3, show_default=True,
              help="Learning rate of the whole-model strategies (LoRA's adapters: 2e-3).")
@click.option("--lam", type=click.FloatRange(0), default=100.0, show_default=True, help="EWC's lambda.")
@click.option("--buffer", type=click.IntRange(1), default=256, show_default=True, help="Replay's buffer size.")
@click.option("--mix", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.25, show_default=True,
              help="Replay's share of each step.")
@SCORING["limit"]
@SCORING["device"]
@db_option
@table_format_option
@handled
def continual_proof(out, zoo, steps, lr, lam, buffer, mix, limit, device, db, fmt) -> None:
    """The small world's continual-learning proof: add, then reverse, then capital, by naive, ewc, replay
    and adapters (merged afterwards); every strategy's backward transfer and new-stage score tested against
    naive. Writes OUT/specs/*.yaml, OUT/proof.json and OUT/proof.png; every model lands in the store."""
    from evals.pipelines.continual_proof import Settings, build_zoo, check_zoo, rows_for_table, run_proof, save, summary
    from evals.report.tables import render
    from evals.scoring.harness import HarnessSettings
    from evals.scoring.store import Store
    from surgery.io.output import output_lock

    if zoo is not None:
        check_zoo(zoo)
    settings = Settings(steps=steps, lr=lr, lam=lam, buffer=buffer, mix=mix)
    with output_lock(out), Store(db) as store:
        zoo = zoo or build_zoo(out, _say)
        runs = run_proof(zoo, out, HarnessSettings(limit=limit, device=device), store, settings, _say)
    result = summary(runs)
    click.echo(render(rows_for_table(result), fmt).rstrip("\n"))
    for name, e in result.items():
        for extra, scores in e["extras"].items():
            click.echo(f"{name} {extra}: " + ", ".join(f"{t} {v:.4f}" for t, v in scores.items()))
    click.echo(f"wrote {' and '.join(save(runs, out))}", err=True)


@click.command("safety-curve")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--zoo", required=True, type=click.Path(file_okay=False),
              help="A small-world models folder (DIR/models of `surgery world DIR`): its base and data splits.")
@click.option("--weights", default="0,0.05,0.1,0.2,0.4", show_default=True,
              help="Mixing weights of the refusal data (the general data weighs 1), from 0.")
@click.option("--steps", type=click.IntRange(1), default=300, show_default=True, help="Training steps of each model.")
@SCORING["limit"]
@SCORING["device"]
@db_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the data, the runs and the bootstrap.")
@table_format_option
@handled
def safety_curve(out, zoo, weights, steps, limit, device, db, seed, fmt) -> None:
    """Refusal, over-refusal and alignment tax along the safety data's mixing weight, on the small world:
    one model per weight, scored on the world and alignment suites, each taxed against the weight-0 model.
    Writes OUT/curve.json and OUT/curve.png; every model lands in the store."""
    from evals.pipelines.safety_curve import TASKS, check_weights, check_zoo, curve_rows, run_curve, save
    from evals.report.tables import render
    from evals.scoring.harness import HarnessSettings
    from evals.scoring.store import Store
    from evals.search.candidates import harness_scorer
    from evals.search.sweep import parse_values
    from surgery.errors import InputError
    from surgery.io.output import output_lock

    values = parse_values(weights)
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise InputError(f"--weights {weights!r}: give numbers such as 0,0.1,0.2")
    values = [float(v) for v in values]
    check_weights(values)
    check_zoo(zoo)
    with output_lock(out), Store(db) as store:
        scorer = harness_scorer(TASKS, HarnessSettings(limit=limit, device=device), store, say=_say)
        points = run_curve(zoo, out, scorer, values, steps, seed, _say)
    click.echo(render(curve_rows(points), fmt).rstrip("\n"))
    click.echo(f"wrote {' and '.join(save(points, out))}", err=True)


@click.command()
@click.argument("folder", type=click.Path(file_okay=False), default="demo")
@click.option("--specs", type=click.Path(file_okay=False, exists=True), default="merges", show_default=True,
              help="Merge specs to run on the trained experts (their models are models/base, add, reverse, refuse).")
@click.option("--base-steps", type=click.IntRange(min=1), help="Pretraining steps of the base (default 600).")
@click.option("--expert-steps", type=click.IntRange(min=1),
              help="Fine-tuning steps of every expert and of the sequence's second stage (default: add 2000, "
                   "reverse 1000, refuse 200; add-then-reverse 300).")
@click.option("--rows", type=click.IntRange(min=1), help="Score only the first N documents of each task (lm-eval's "
              "--limit).")
@handled
def world(folder, specs, base_steps, expert_steps, rows) -> None:
    """Train the demo's base (the small world's language and capitals, none of its skills) and one
    expert per skill in FOLDER/models, merge the experts with every spec in SPECS, score every model
    through lm-eval into FOLDER/evals.sqlite, and print the scores, the leaderboard, the refusal expert's
    alignment tax and the forgetting of a two-stage sequence; writes the PNGs in FOLDER. Every stage is
    kept by the hash of its inputs: a second run reuses what did not change, a stopped run resumes at
    its stage."""
    from dataclasses import replace

    from evals.pipelines.demo import run_world_demo
    from surgery.io.output import output_lock
    from trainers.world.demo_zoo import SKILLS, Recipe

    recipe = Recipe()
    if base_steps:
        recipe = replace(recipe, base_steps=base_steps)
    if expert_steps:
        recipe = replace(recipe, expert_steps=tuple((t, expert_steps) for t in SKILLS), sequence_steps=expert_steps)
    try:
        with output_lock(folder):  # a second `world` into FOLDER exits naming this one's pid
            run_world_demo(folder, specs, recipe, echo=click.echo, rows_per_task=rows)
    except KeyboardInterrupt:
        click.echo(f"interrupted: the finished stages in {folder} are kept; run the same command again to "
                   "resume at the stage that was stopped", err=True)
        sys.exit(130)
