"""`surgery eval CKPT [CKPT ...] --suite world` (scores through lm-eval, kept in the results store) and
`surgery leaderboard` (the stored scores with each checkpoint's lineage)."""

from __future__ import annotations

import os

import click

from evals.report.leaderboard import FORMATS
from evals.scoring.suites import suite_help, suite_metavar
from surgery.cli.common import handled


def _model_args(text: str) -> dict:
    """'KEY=VALUE,KEY=VALUE' -> dict, values as lm-eval's own --model_args would give them."""
    pairs = [p for p in text.split(",") if p.strip()]
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not KEY=VALUE; write e.g. parallelize=True,dtype=bfloat16")
    return dict(p.split("=", 1) for p in pairs)


SCORING = {  # how checkpoints are scored: `surgery eval`, `soup` and `sweep` share them all, `evolve` some
    "suite": click.option("--suite", default="world", show_default=True, metavar=suite_metavar(), help=suite_help()),
    "tasks": click.option("--tasks", help="Comma-separated lm-eval task names, instead of a suite."),
    "limit": click.option("--limit", type=int, help="Score only the first N documents of each task."),
    "num_fewshot": click.option("--num-fewshot", type=int,
                                help="Few-shot examples per prompt (default: each task's own)."),
    "batch_size": click.option("--batch-size", default="8", show_default=True,
                               help="lm-eval batch size (a number, or auto on GPU)."),
    "device": click.option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when there is one)."),
    "backend": click.option("--backend", default="hf", show_default=True, help="lm-eval model type: hf, vllm, ..."),
    "model_args": click.option("--model-args", default="", metavar="K=V,...", help="Passed to lm-eval's model, e.g. "
                               "parallelize=True (accelerate) or tensor_parallel_size=2 (vLLM)."),
    "db": click.option("--db", type=click.Path(dir_okay=False), help="Results store (default "
                       "$SURGERY_HOME/evals.sqlite, else .surgery/evals.sqlite here)."),
    "apply_chat_template": click.option(
        "--apply-chat-template", is_flag=True, help="Format prompts with each checkpoint's chat template (lm-eval's "
        "option); a warning says when this differs from how a checkpoint was trained."),
    "force": click.option("--force", is_flag=True, help="Run again even when the store has these scores."),
    "include_path": click.option("--include-path", type=click.Path(exists=True, file_okay=False),
                                 help="A folder of your own lm-eval task YAMLs (as lm-eval's --include_path), "
                                 "named with --tasks; a task's files are part of its stored key, so an edited "
                                 "task is scored again."),
}
SCORING_OPTIONS = tuple(SCORING.values())


# options the commands reading the store share (each call of these decorators adds a fresh option)
db_option = click.option("--db", type=click.Path(dir_okay=False), help="Results store (as for surgery eval).")
table_format_option = click.option("--format", "fmt", type=click.Choice(("table", "md", "csv")), default="table",
                                   show_default=True)
alpha_option = click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
                            show_default=True, help="Significance level of McNemar's test and the bootstrap interval.")
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the paired bootstrap.")


def scoring_options(command):
    for option in reversed(SCORING_OPTIONS):
        command = option(command)
    return command


def _scoring(suite, tasks, limit, num_fewshot, batch_size, device, backend, model_args, apply_chat_template=False,
             include_path=None):
    """(task names, harness HarnessSettings) from the scoring options."""
    from evals.scoring.harness import HarnessSettings
    from evals.scoring.suites import suite_tasks

    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else list(suite_tasks(suite))
    settings = HarnessSettings(limit=limit, num_fewshot=num_fewshot, device=device, backend=backend,
                        batch_size=int(batch_size) if batch_size.isdigit() else batch_size,
                        model_args=_model_args(model_args), apply_chat_template=apply_chat_template,
                        include_path=os.path.abspath(include_path) if include_path else None)
    return names, settings


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.command("eval")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@scoring_options
@handled
def eval_(checkpoints, suite, tasks, limit, num_fewshot, batch_size, device, backend, model_args, db,
          apply_chat_template, force, include_path) -> None:
    """Evaluate checkpoint folders (models, or PEFT adapters over a local base) with lm-eval.

    Scores are stored by the hash of the weights: unchanged weights are served from the store, under
    any path; changed weights are evaluated again.
    """
    from evals.report.leaderboard import render
    from evals.scoring.run import prepare, score
    from evals.scoring.store import Store

    names, settings = _scoring(suite, tasks, limit, num_fewshot, batch_size, device, backend, model_args,
                               apply_chat_template, include_path)
    # before the store: a bad checkpoint or task creates none
    batch = prepare(checkpoints, names, settings.include_path)
    with Store(db) as store:
        table = score(batch, settings, store, force, say=lambda m: click.echo(m, err=True))
    rows = [{"checkpoint": name, "task": s.task, "metric": s.metric, "value": s.value, "stderr": s.stderr, "n": s.n}
            for name, scores in table.items() for s in scores.values()]
    click.echo(render(rows, "table"))


@click.command()
@click.option("--suite", help="Only this suite's tasks (default: every stored task).")
@click.option("--sort", "sort_by", default="mean", show_default=True, help="Column to sort by.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@db_option
@click.option("--pareto", "pareto_png", type=click.Path(dir_okay=False),
              help="Also draw every run at (alignment, general capability) with the Pareto front, as a PNG here.")
@click.option("--general-suite", default="general", show_default=True, help="The suite of --pareto's G axis.")
@click.option("--alignment-suite", default="alignment", show_default=True, help="The suite of --pareto's other axis.")
@handled
def leaderboard(suite, sort_by, fmt, db, pareto_png, general_suite, alignment_suite) -> None:
    """Stored scores, one row per checkpoint, with what it was made by and from."""
    from evals.report.leaderboard import render, rows, sort_rows
    from evals.scoring.store import Store, default_path

    _figure_path(pareto_png, "--pareto")
    if db is None and not os.path.exists(default_path()):  # nothing evaluated here yet; a --db must exist
        click.echo("no scores stored yet; run `surgery eval CHECKPOINT` first", err=True)
        return
    with Store(db, readonly=True) as store:
        table, changed = rows(store, suite)
        if pareto_png:
            _pareto(store, pareto_png, general_suite, alignment_suite)
    if changed:
        click.echo(f"left out, changed since evaluated (run surgery eval on them again): {', '.join(changed)}",
                   err=True)
    if not table:
        click.echo("no scores stored yet; run `surgery eval CHECKPOINT` first", err=True)
        return
    click.echo(render(sort_rows(table, sort_by), fmt))


def _figure_path(png: str | None, flag: str) -> None:
    """A figure's folder must exist: checked before the work the figure shows."""
    from surgery.io.output import check_file_output

    if png:
        check_file_output(png, flag)


def _pareto(store, png: str, general_suite: str, alignment_suite: str) -> None:
    from evals.analysis.metrics import pareto_front
    from evals.analysis.pareto import pareto_points
    from evals.report.leaderboard import short_path
    from evals.report.plots import pareto_figure, save_png
    from evals.scoring.suites import suite_tasks
    from surgery.errors import InputError

    points, skipped = pareto_points(store.table(), suite_tasks(general_suite), suite_tasks(alignment_suite))
    if skipped:
        click.echo(f"--pareto: left out, not scored on both {general_suite} and {alignment_suite}: "
                   f"{', '.join(short_path(n) for n in skipped)}", err=True)
    if not points:
        raise InputError(f"--pareto: no run is scored on both suites {general_suite!r} and {alignment_suite!r}; run "
                         f"`surgery eval CKPT --suite {general_suite}` and `--suite {alignment_suite}` first")
    labelled = {short_path(name): p for name, p in points.items()}
    save_png(pareto_figure(labelled, pareto_front(labelled)), png)
    click.echo(f"wrote {png}: {len(labelled)} runs, Pareto front {', '.join(pareto_front(labelled))}", err=True)


def _suite_tasks(table: dict, suite: str) -> list[str]:
    """The stored tasks the suite covers (a group such as leaderboard stands for its subtasks)."""
    from evals.scoring.suites import SUITES
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
@alpha_option
@seed_option
@table_format_option
@db_option
@handled
def tax(before, after, suite, alignment_suite, alpha, seed, fmt, db) -> None:
    """Alignment tax: general capability G (mean chance-corrected score on --suite) before minus after,
    its relative size and worst task, beside the gain on --alignment-suite. Each difference is tested
    (exact McNemar and a paired bootstrap); one both tests do not support is reported as noise."""
    from evals.analysis.metrics import alignment_tax
    from evals.report.tables import render_tax
    from evals.scoring.store import Store

    with Store(db, readonly=True) as store:
        general = store.comparable_table([before, after], suite)
        aligned = store.comparable_table([before, after], alignment_suite)
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
@alpha_option
@seed_option
@table_format_option
@db_option
@handled
def forgetting(checkpoints, suite, stage_tasks, joint, normalise, png, alpha, seed, fmt, db) -> None:
    """Forgetting over a training sequence CKPT_0 CKPT_1 ... (CKPT_0 before the first stage): the
    stages x tasks scores, each task's change since its best earlier stage (tested: exact McNemar and
    a paired bootstrap), and with --stage-tasks the GEM and RWalk summaries. A single folder written by
    `surgery continual` stands for its base and the model after each of its stages (and its stage tasks)."""
    from evals.analysis.continual import forgetting_report
    from evals.pipelines.continual import expand
    from evals.report.plots import forgetting_figure, save_png
    from evals.report.tables import render_forgetting
    from evals.scoring.store import Store

    stages = [t.strip() for t in stage_tasks.split(",") if t.strip()] if stage_tasks else None
    checkpoints, stages = expand(checkpoints, stages)  # a `surgery continual` OUT: its base and stage models
    names = list(checkpoints) + ([joint] if joint else [])
    _figure_path(png, "--png")
    with Store(db, readonly=True) as store:
        table = store.comparable_table(names, suite)
    report = forgetting_report(table, list(checkpoints), stages, table[joint] if joint else None, normalise,
                               alpha, seed=seed)
    click.echo(render_forgetting(report, fmt))
    if png:
        title = f"{'normalised score' if normalise else 'score'} after each stage"
        figure = forgetting_figure(report.checkpoints, report.tasks, report.matrix, title)
        click.echo(f"wrote {save_png(figure, png)}", err=True)


@click.command()
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the soups tried, one subfolder per step (soup-2-with-NAME, ...).")
@click.option("--select", metavar="TASK", help="Held-out task to rank and accept by (default: the mean over the "
              "tasks, over-refusal as 1 - rate, perplexities left out).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="dtype of the soups written "
              "(default: the inputs').")
@scoring_options
@table_format_option
@handled
def soup(checkpoints, out, select, dtype, suite, tasks, limit, num_fewshot, batch_size, device, backend, model_args,
         db, apply_chat_template, force, include_path, fmt) -> None:
    """Greedy soup of fine-tunes of one base: rank CHECKPOINTS by held-out score, start from the best,
    add each next one to the uniform average only if the score does not drop (Model Soups, Wortsman
    et al. 2022). Every soup tried is merged, scored and stored (see `surgery leaderboard`)."""
    from evals.report.tables import render
    from evals.scoring.store import Store
    from evals.search.candidates import check_select, harness_scorer
    from evals.search.soup import check_soup, run_soup, soup_rows
    from surgery.io.output import output_lock

    names, settings = _scoring(suite, tasks, limit, num_fewshot, batch_size, device, backend, model_args,
                               apply_chat_template, include_path)
    check_select(select, names)
    check_soup(checkpoints, dtype)  # every candidate's files, and the soup of them all, before any scoring
    with output_lock(out), Store(db) as store:  # OUT locked first: a second search into it opens no store
        result = run_soup(checkpoints, out, harness_scorer(names, settings, store, force, _say), select, dtype)
    click.echo(render(soup_rows(result), fmt).rstrip("\n"))
    click.echo(f"soup of {len(result.ingredients)}: {result.folder} (held-out {result.score:.4f})", err=True)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--param", required=True, metavar="PATH", help="Dotted path of the field to sweep in SPEC, e.g. "
              "models.0.parameters.weight or parameters.t.")
@click.option("--values", required=True, metavar="V1,V2,...", help="Comma-separated values, e.g. 0,0.25,0.5.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the merges, one subfolder per value (weight=0.25, ...).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Read relative model paths of SPEC from here "
              "(default: the current folder).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write the scores against the value as a PNG.")
@scoring_options
@table_format_option
@handled
def sweep(spec, param, values, out, models_dir, plot, suite, tasks, limit, num_fewshot, batch_size, device, backend,
          model_args, db, apply_chat_template, force, include_path, fmt) -> None:
    """Sweep one merge parameter: for each value, SPEC with PARAM set to it is merged and scored; prints
    the score on each task and the mean per value. Every point is checked before the first merge."""
    from evals.report.plots import save_png, sweep_figure
    from evals.report.tables import render
    from evals.scoring.store import Store
    from evals.search.candidates import harness_scorer
    from evals.search.sweep import parse_values, point_specs, sweep_rows, sweep_series
    from evals.search.sweep import sweep as run_sweep
    from surgery.io.output import output_lock
    from surgery.merge.spec import read_spec_data

    names, settings = _scoring(suite, tasks, limit, num_fewshot, batch_size, device, backend, model_args,
                               apply_chat_template, include_path)
    values = parse_values(values)
    _figure_path(plot, "--plot")
    data = read_spec_data(spec)
    point_specs(data, spec, param, values, models_dir)  # every point planned before the store is opened
    with output_lock(out), Store(db) as store:
        points = run_sweep(data, spec, param, values, out, harness_scorer(names, settings, store, force, _say),
                           models_dir)
    click.echo(render(sweep_rows(points, param), fmt).rstrip("\n"))
    if plot:
        figure = sweep_figure(param, values, sweep_series(points), f"scores along {param}")
        click.echo(f"wrote {save_png(figure, plot)}", err=True)


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--zoo", type=click.Path(file_okay=False), help="A small-world zoo with `base` and `add` (e.g. "
              "DIR/models of `surgery world DIR`); trained under OUT/zoo when not given or missing there.")
@click.option("--base-steps", type=click.IntRange(1), default=2000, show_default=True,
              help="Training steps of the zoo's base, when it is trained here.")
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True,
              help="Steps of each fine-tune (the parent gets 1.5x).")
@click.option("--weights", default=",".join(map(str, (0.0, 0.25, 0.5, 0.75, 1.0))), show_default=True,
              help="Weights of the aligned model's task vector to sweep (0: the parent, 1: the aligned model).")
@click.option("--limit", type=int, help="Score only the first N documents of each task.")
@click.option("--device", help="cpu, cuda, ... (default: cuda when there is one).")
@db_option
@seed_option
@handled
def proof(out, zoo, base_steps, steps, weights, limit, device, db, seed) -> None:
    """The small world's evals proof: the alignment tax of a refusal-trained model over its parent,
    backward transfer over two training stages, and the tax along the weight average of the two.
    Writes OUT/proof.json (the numbers) and OUT/averaging.png; every model lands in the results store."""
    from evals.report.tables import render, render_forgetting, render_tax
    from evals.scoring.harness import HarnessSettings
    from evals.scoring.store import Store
    from evals.search.candidates import harness_scorer
    from evals.search.proof import PARAM, TASKS, check_runs, check_zoo, parse_weights, run_proof, save, sweep_table

    values = parse_weights(weights)
    check_zoo(zoo or os.path.join(out, "zoo"))  # before the store, and before anything trains
    check_runs(out)
    with Store(db) as store:
        scorer = harness_scorer(TASKS, HarnessSettings(limit=limit, device=device), store, say=_say)
        result = run_proof(out, zoo or os.path.join(out, "zoo"), scorer, base_steps, steps, values, _say, seed)
    click.echo("(a) alignment tax, parent (sft) -> aligned\n" + render_tax(result.tax, "sft", "aligned"))
    click.echo("\n(b) forgetting, base -> add -> add-then-reverse\n" + render_forgetting(result.forgetting))
    click.echo(f"\n(c) parent + w (aligned - parent), {PARAM} = w\n" + render(sweep_table(result)))
    click.echo(f"wrote {' and '.join(save(result, out))}", err=True)


@click.command("merge-quality")
@click.argument("merged", type=click.Path())
@click.option("--expert", "experts", multiple=True, metavar="TASK=CKPT",
              help="The expert fine-tuned on TASK (repeat per task). Default: the merge's inputs from its lineage, "
                   "each task's expert being the input that scores best on it.")
@click.option("--suite", help="Only this suite's tasks (default: every task scored on the merged model).")
@click.option("--png", type=click.Path(dir_okay=False), help="Also draw the merged / expert bars as a PNG here.")
@table_format_option
@db_option
@handled
def merge_quality(merged, experts, suite, png, fmt, db) -> None:
    """Merge quality: the merged model's score on each expert's task over the expert's own, and their
    mean, the normalised accuracy (Ilharco et al. 2023), from stored scores."""
    from evals.analysis.experts import chosen_experts
    from evals.analysis.metrics import merge_ratios
    from evals.report.plots import merge_quality_figure, save_png
    from evals.report.tables import render
    from evals.scoring.store import Store

    _figure_path(png, "--png")
    with Store(db, readonly=True) as store:
        name = os.path.abspath(merged)
        scores = store.table([name], suite)[name]
        chosen = chosen_experts(store, name, scores, experts, suite)
    ratios = merge_ratios(scores, {task: s for task, (_, s) in chosen.items()})
    rows = [{"task": t, "expert": path, "expert score": s.value, "merged": scores[t].value, "ratio": ratios[t]}
            for t, (path, s) in chosen.items()]
    click.echo(render(rows, fmt))
    click.echo(f"normalised accuracy {sum(ratios.values()) / len(ratios):.4f} over {len(ratios)} task(s)")
    if png:
        save_png(merge_quality_figure(ratios, f"merge quality of {os.path.basename(name)}"), png)
        click.echo(f"wrote {png}", err=True)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder of the search: search.json "
              "(every generation), best.yaml and best/ (the best merge so far), progress.png.")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Read relative model paths of SPEC from here "
              "(default: the current folder).")
@click.option("--resume", is_flag=True, help="Continue the search in OUT (only the spec's budget may change).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Candidates evaluated at once: "
              "1 runs them one after another in this process (no Ray); more start Ray workers on this machine.")
@click.option("--ray-address", help="Join this Ray cluster (e.g. auto, or ray://HOST:10001) instead of starting one; "
              "every node needs surgery installed and the models at the same paths.")
@click.option("--worker-cpus", type=click.IntRange(1), default=1, show_default=True,
              help="CPUs (torch threads) of each candidate's merge and evaluation, in this process as in a Ray "
                   "worker: the same arithmetic whatever the workers.")
@click.option("--worker-gpus", type=click.FloatRange(0), default=0.0, show_default=True,
              help="GPUs Ray gives each candidate (1: a GPU of its own; lm-eval then runs on it).")
@click.option("--scratch", type=click.Path(file_okay=False), help="Where candidates are merged before they are scored "
              "and deleted (default OUT/candidates; on a cluster, a path every node can write).")
@click.option("--heldout", metavar="T1,T2,...", help="After the search, score the best and each --against on these "
              "tasks (not tuned on; every document, whatever the spec's limit) and test every difference (McNemar, "
              "paired bootstrap).")
@click.option("--against", multiple=True, type=click.Path(), help="A baseline for --heldout: a merge spec (merged "
              "into OUT/against/NAME; relative models under --models-dir) or a model folder. Repeat for more.")
@alpha_option
@SCORING["batch_size"]
@SCORING["device"]
@SCORING["backend"]
@SCORING["model_args"]
@SCORING["db"]
@table_format_option
@handled
def evolve(spec, out, models_dir, resume, workers, ray_address, worker_cpus, worker_gpus, scratch, heldout, against,
           alpha, batch_size, device, backend, model_args, db, fmt) -> None:
    """Evolutionary merge search (mergekit-evolve's config): CMA-ES tunes the genome's per-layer-group
    weights and densities; every candidate is merged, scored on the spec's tasks, recorded in the store
    (see `surgery leaderboard`) and deleted. Writes OUT/best.yaml, a spec `surgery merge` runs."""
    import os
    from dataclasses import replace
    from functools import partial

    from tqdm import tqdm

    from evals.report.tables import render
    from evals.scoring.harness import HarnessSettings
    from evals.scoring.store import Store
    from evals.scoring.suites import tuning_warnings
    from evals.search.evolve import HarnessScoring, Search, best_rows, cpu_threads
    from evals.search.genome import ignored_fields, load_evolve_spec, resolve_genome
    from evals.search.heldout import check_baselines, check_heldout
    from evals.search.workers import workers_for

    parsed, text = load_evolve_spec(spec)
    genome = resolve_genome(parsed.genome, spec, text, models_dir)
    tuned = [t.name for t in parsed.tasks]
    held = [t.strip() for t in heldout.split(",") if t.strip()] if heldout else []
    _check_evolve_tasks(tuned + held)
    check_heldout(held, tuned)
    if against and not held:
        raise click.UsageError("--against needs --heldout: the tasks to compare the best and the baselines on")
    check_baselines(against, models_dir)
    for warning in tuning_warnings(tuned) + [f"{f}: a mergekit field, ignored here" for f in ignored_fields(parsed)]:
        _say(f"warning: {warning}")
    settings = HarnessSettings(limit=parsed.limit, num_fewshot=parsed.num_fewshot, device=device, backend=backend,
                               batch_size=int(batch_size) if batch_size.isdigit() else batch_size,
                               model_args=_model_args(model_args), apply_chat_template=parsed.apply_chat_template)
    out, scratch = os.path.abspath(out), os.path.abspath(scratch or os.path.join(out, "candidates"))
    with Store(db) as store:
        search = Search(parsed, genome, spec, out, scratch, HarnessScoring(tuple(tuned), settings), store,
                        partial(workers_for, workers, ray_address, worker_cpus, worker_gpus), worker_cpus, tqdm.write)
        state = _run_evolve(search, resume)
        click.echo(render(best_rows(state, genome), fmt).rstrip("\n"))
        if held and state.best() is not None:
            with cpu_threads(worker_cpus):  # the full test splits, whatever the spec's limit
                _evolve_heldout(os.path.join(out, "best"), against, held, out, models_dir,
                                replace(settings, limit=None), store, alpha, fmt)


def _check_evolve_tasks(tasks: list[str]) -> None:
    """Every task known to lm-eval (the local suites without building lm-eval's whole index)."""
    from evals.scoring import harness
    from evals.scoring.suites import METRICS, check_tasks

    local = all(t in METRICS for t in tasks)
    check_tasks(tasks, list(METRICS) if local else harness.known_tasks(harness.task_manager()))


def _run_evolve(search, resume: bool):
    """The search with a progress bar over its budget; the workers closed however it ends."""
    import os
    from dataclasses import replace

    from tqdm import tqdm

    from evals.search.evolve import STATE, load_state, run_search

    done = load_state(search.out).evaluations if resume and os.path.isfile(os.path.join(search.out, STATE)) else 0
    bar = tqdm(total=search.spec.budget, initial=done, desc="evolve", unit="candidate")
    try:
        state = run_search(replace(search, tick=lambda _: bar.update()), resume)
    except KeyboardInterrupt:  # the generations done are kept: say so, rather than the usual "nothing written"
        click.echo(f"interrupted: {search.out}/search.json keeps every finished generation; --resume continues",
                   err=True)
        raise SystemExit(130) from None
    finally:
        bar.close()
    click.echo(f"stopped: {state.stopped}", err=True)
    return state


def _evolve_heldout(best, against, tasks, out, models_dir, settings, store, alpha, fmt) -> None:
    """The best and each baseline scored on the held-out tasks, every difference tested; OUT/heldout.json."""
    import json
    import os

    from evals.report.tables import render
    from evals.scoring.run import evaluate
    from evals.search.evolve import write_text
    from evals.search.heldout import baseline_folders, heldout_rows

    baselines = baseline_folders(against, out, models_dir)
    table = evaluate([best, *baselines], tasks, settings, store, say=_say)
    rows = heldout_rows(table, os.path.abspath(best), baselines, tasks, alpha)
    click.echo("\nheld out: the best against each baseline\n" + render(rows, fmt).rstrip("\n"))
    write_text(os.path.join(out, "heldout.json"), json.dumps(rows, indent=1) + "\n")
