"""`surgery eval CKPT [CKPT ...] --suite world` (scores through lm-eval, kept in the results store) and
`surgery leaderboard` (the stored scores with each checkpoint's lineage)."""

from __future__ import annotations

import click

from evals.leaderboard import FORMATS
from surgery.cli.common import handled


def _model_args(text: str) -> dict:
    """'KEY=VALUE,KEY=VALUE' -> dict, values as lm-eval's own --model_args would give them."""
    pairs = [p for p in text.split(",") if p.strip()]
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not KEY=VALUE; write e.g. parallelize=True,dtype=bfloat16")
    return dict(p.split("=", 1) for p in pairs)


@click.command("eval")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--suite", default="world", show_default=True, help="world, general, alignment or leaderboard.")
@click.option("--tasks", help="Comma-separated lm-eval task names, instead of a suite.")
@click.option("--limit", type=int, help="Score only the first N documents of each task.")
@click.option("--num-fewshot", type=int, help="Few-shot examples per prompt (default: each task's own).")
@click.option("--batch-size", default="8", show_default=True, help="lm-eval batch size (a number, or auto on GPU).")
@click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when there is one).")
@click.option("--backend", default="hf", show_default=True, help="lm-eval model type: hf, vllm, ...")
@click.option("--model-args", default="", metavar="K=V,...",
              help="Passed to lm-eval's model, e.g. parallelize=True (accelerate) or tensor_parallel_size=2 (vLLM).")
@click.option("--db", type=click.Path(dir_okay=False), help="Results store (default $SURGERY_HOME/evals.sqlite, "
              "else .surgery/evals.sqlite here).")
@click.option("--force", is_flag=True, help="Run again even when the store has these scores.")
@handled
def eval_(checkpoints, suite, tasks, limit, num_fewshot, batch_size, device, backend, model_args, db, force) -> None:
    """Evaluate checkpoint folders (models, or PEFT adapters over a local base) with lm-eval.

    Scores are stored by the hash of the weights: unchanged weights are served from the store, under
    any path; changed weights are evaluated again.
    """
    from evals.harness import Settings
    from evals.leaderboard import render
    from evals.run import evaluate
    from evals.store import Store
    from evals.suites import suite_tasks

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else list(suite_tasks(suite))
    settings = Settings(limit=limit, num_fewshot=num_fewshot, device=device, backend=backend,
                        batch_size=int(batch_size) if batch_size.isdigit() else batch_size,
                        model_args=_model_args(model_args))
    with Store(db) as store:
        table = evaluate(checkpoints, names, settings, store, force, say=lambda m: click.echo(m, err=True))
    rows = [{"checkpoint": name, "task": s.task, "metric": s.metric, "value": s.value, "stderr": s.stderr, "n": s.n}
            for name, scores in table.items() for s in scores.values()]
    click.echo(render(rows, "table"))


@click.command()
@click.option("--suite", help="Only this suite's tasks (default: every stored task).")
@click.option("--sort", "sort_by", default="mean", show_default=True, help="Column to sort by.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--db", type=click.Path(dir_okay=False), help="Results store (as for surgery eval).")
@handled
def leaderboard(suite, sort_by, fmt, db) -> None:
    """Stored scores, one row per checkpoint, with what it was made by and from."""
    from evals.leaderboard import render, rows, sort_rows
    from evals.store import Store

    with Store(db) as store:
        table, changed = rows(store, suite)
    if changed:
        click.echo(f"left out, changed since evaluated (run surgery eval on them again): {', '.join(changed)}", err=True)
    if not table:
        click.echo("no scores stored yet; run `surgery eval CHECKPOINT` first", err=True)
        return
    click.echo(render(sort_rows(table, sort_by), fmt))


def _compared(store, names: list[str], suite: str | None) -> dict:
    """The score table of `names` on the suite's tasks (every stored task when None), refused when the
    checkpoints were evaluated with different task versions, few-shot counts or limits."""
    from evals.metrics import check_comparable
    from evals.suites import SUITES

    table = store.table(names, suite)
    wanted = SUITES.get(suite, (suite,)) if suite else None
    check_comparable({n: store.provenance(store.hash_of(n), wanted) for n in names})
    return table


def _suite_tasks(table: dict, suite: str) -> list[str]:
    """The stored tasks the suite covers (a group such as leaderboard stands for its subtasks)."""
    from evals.suites import SUITES
    from surgery.errors import InputError

    tasks = list(dict.fromkeys(t for scores in table.values() for t in scores))
    if not tasks:
        raise InputError(f"no stored scores on suite {suite!r} (the suites are {', '.join(SUITES)}); run "
                         f"`surgery eval CKPT --suite {suite}` on both checkpoints first")
    return tasks


@click.command()
@click.option("--before", required=True, type=click.Path(),
              help="The checkpoint before alignment, as given to surgery eval.")
@click.option("--after", required=True, type=click.Path(), help="The checkpoint after alignment.")
@click.option("--suite", default="general", show_default=True, help="Suite whose mean normalised score is G.")
@click.option("--alignment-suite", default="alignment", show_default=True, help="Suite the alignment should raise.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="Significance level of McNemar's test and the bootstrap interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the paired bootstrap.")
@click.option("--format", "fmt", type=click.Choice(("table", "md", "csv")), default="table", show_default=True)
@click.option("--db", type=click.Path(dir_okay=False), help="Results store (as for surgery eval).")
@handled
def tax(before, after, suite, alignment_suite, alpha, seed, fmt, db) -> None:
    """Alignment tax: general capability G (mean chance-corrected score on --suite) before minus after,
    its relative size and worst task, beside the gain on --alignment-suite. Each difference is tested
    (exact McNemar and a paired bootstrap); one both tests do not support is reported as noise."""
    from evals.metrics import alignment_tax
    from evals.reports import render_tax
    from evals.store import Store

    with Store(db) as store:
        general = _compared(store, [before, after], suite)
        aligned = _compared(store, [before, after], alignment_suite)
    result = alignment_tax({**general[before], **aligned[before]}, {**general[after], **aligned[after]},
                           _suite_tasks(general, suite), _suite_tasks(aligned, alignment_suite), alpha, seed=seed)
    click.echo(render_tax(result, before, after, fmt))


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--suite", help="Only this suite's tasks (default: every task scored on all the checkpoints).")
@click.option("--stage-tasks", metavar="T1,T2,...",
              help="The task each checkpoint after the first was trained on, in order: adds GEM's ACC, BWT and "
                   "FWT (the first checkpoint is FWT's baseline) and RWalk's forgetting.")
@click.option("--joint", type=click.Path(), help="A checkpoint trained on all the stage tasks at once: the "
              "reference of RWalk's intransigence.")
@click.option("--normalise", is_flag=True, help="Chance-corrected scores instead of the scores as evaluated.")
@click.option("--png", type=click.Path(dir_okay=False), help="Also write the stages x tasks heat map here.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="Significance level of McNemar's test and the bootstrap interval.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the paired bootstrap.")
@click.option("--format", "fmt", type=click.Choice(("table", "md", "csv")), default="table", show_default=True)
@click.option("--db", type=click.Path(dir_okay=False), help="Results store (as for surgery eval).")
@handled
def forgetting(checkpoints, suite, stage_tasks, joint, normalise, png, alpha, seed, fmt, db) -> None:
    """Forgetting over a training sequence CKPT_0 CKPT_1 ... (CKPT_0 before the first stage): the
    stages x tasks scores, each task's change since its best earlier stage (tested: exact McNemar and
    a paired bootstrap), and with --stage-tasks the GEM and RWalk summaries."""
    from evals.continual import forgetting_report
    from evals.plots import forgetting_figure, save_png
    from evals.reports import render_forgetting
    from evals.store import Store

    names = list(checkpoints) + ([joint] if joint else [])
    stages = [t.strip() for t in stage_tasks.split(",") if t.strip()] if stage_tasks else None
    with Store(db) as store:
        table = _compared(store, names, suite)
    report = forgetting_report(table, list(checkpoints), stages, table[joint] if joint else None, normalise,
                               alpha, seed=seed)
    click.echo(render_forgetting(report, fmt))
    if png:
        title = f"{'normalised score' if normalise else 'score'} after each stage"
        figure = forgetting_figure(report.checkpoints, report.tasks, report.matrix, title)
        click.echo(f"wrote {save_png(figure, png)}", err=True)
