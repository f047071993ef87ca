"""The main demo's whole loop (`make demo`, `surgery world DIR`): the demo zoo's base and three experts
trained, merged with every spec of `merges/`, a two-stage sequence trained (trainers/world/demo.py), then
every model scored as `surgery eval` scores it (lm-eval, into the results store `DIR/evals.sqlite`), and
from that store: the score table with each merge's normalised accuracy, the leaderboard (lineage,
forgetting against the parent, merge quality), the refusal expert's alignment tax over its parent with
its tests, the sequence's forgetting with its tests, the merge-quality bars and the Pareto plot.

Each score and each report is a stage like the models (trainers/world/stages.py), kept by the content
hash of its inputs: a second run reads everything back, a changed model is scored again and what
reads its scores is redrawn, and a damaged output is rebuilt with one line.
"""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stderr

from evals.analysis.continual import forgetting_report
from evals.analysis.metrics import Scores, alignment_tax, merge_ratios, oriented, pareto_front
from evals.analysis.origin import origin
from evals.analysis.parent_metrics import measured
from evals.analysis.pareto import pareto_points
from evals.report.leaderboard import lineage_columns, mean_score, short_path
from evals.report.tables import forgetting_line, render, tax_line
from evals.scoring.harness import HarnessSettings
from evals.scoring.run import evaluate, task_key
from evals.scoring.scores import ScoreTable
from evals.scoring.store import Store
from evals.scoring.suites import SUITES
from surgery.errors import InputError
from trainers.world.demo import (
    EXPERTS,
    SEQUENCE,
    SEQUENCE_NAME,
    build_models,
    check_png,
    conflicts_stage,
    merge_stage,
    sequence_stage,
)
from trainers.world.demo_zoo import Recipe
from trainers.world.stages import Stage, run_stage

Echo = Callable[[str], None]
SKILL_TASKS = {"add": "world_add", "reverse": "world_reverse", "refuse": "refusal"}  # each expert's own task
GENERAL = tuple(t for t in SUITES["world"] if t != "world_perplexity")  # bounded: G, the tax's and Pareto's axis
ALIGNMENT = ("refusal", "over_refusal")  # the small world's own alignment tasks (the rest of the suite is real-world)
TASKS = GENERAL + ALIGNMENT
COLUMNS = {"add": "world_add", "reverse": "world_reverse", "capital": "world_capital",
           "choice": "world_capital_choice", "refusal": "refusal", "over-ref": "over_refusal"}  # table column: task
STORE = "evals.sqlite"
SCORED = "evals"  # DIR/evals/NAME.json: what each eval stage scored (the weights' hash, the scores)
THREADS = 1  # torch threads while scoring: a 0.17M model gains nothing from more, and more threads than free
#              cores slowed a loaded 2-core machine 15-100 times (the reverse expert: 136 s at 2 threads, 1.4 s at 1)
REPORT = "report.json"


def run_world_demo(folder: str, specs: str, recipe: Recipe | None = None, echo: Echo = print,
                   rows_per_task: int | None = None) -> dict:
    """Build every stage (or reuse it), print the report and the closing lines; returns the report
    ({"scores": {model: {task: score}}, "table", "leaderboard", "tax", "forgetting"})."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder, recipe = os.path.abspath(folder), recipe or Recipe()
    keys, models, methods = build_all_models(folder, specs, recipe, echo)
    pngs = score_and_draw(folder, models, methods, keys, HarnessSettings(limit=rows_per_task), echo)
    with open(os.path.join(folder, REPORT)) as f:
        report = json.load(f)
    for part in ("table", "leaderboard", "tax", "forgetting"):
        echo(report[part])
    echo(closing(folder, specs, pngs, rows_per_task))
    return report


def build_all_models(folder: str, specs: str, recipe: Recipe,
                     echo: Echo) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The zoo, each spec's merge, the sequence and the sign-conflict map, each a stage; returns ({stage:
    key}, {model name: folder}, {merge name: method})."""
    keys = build_models(folder, recipe, echo)
    models, methods = {n: os.path.join(folder, "models", n) for n in ("base", *EXPERTS)}, {}
    for spec_file in sorted(glob.glob(os.path.join(specs, "*.yaml"))):
        name = os.path.basename(spec_file).removesuffix(".yaml")
        keys[name] = run_stage(folder, merge_stage(folder, spec_file, keys), echo)
        models[name], methods[name] = os.path.join(folder, "out", name), _method(spec_file)
    keys[SEQUENCE_NAME] = run_stage(folder, sequence_stage(os.path.join(folder, "models"), recipe, keys), echo)
    models[SEQUENCE_NAME] = os.path.join(folder, "models", SEQUENCE_NAME)
    run_stage(folder, conflicts_stage(folder, keys), echo)
    return keys, models, methods


def score_and_draw(folder: str, models: dict[str, str], methods: dict[str, str], keys: dict[str, str],
                   settings: HarnessSettings, echo: Echo) -> list[str]:
    """Every model scored into the store, the report and the PNGs made from it, each a stage; returns the PNGs."""
    with open_store(os.path.join(folder, STORE), echo) as store:
        scored = {n: run_stage(folder, eval_stage(folder, n, path, keys, settings, store), echo)
                  for n, path in models.items()}
        run_stage(folder, report_stage(folder, models, methods, scored, settings, store), echo)
        pngs = [os.path.join(folder, "sign-conflicts.png")]
        for stage in (merge_quality_stage(folder, models, scored, settings, store),
                      pareto_stage(folder, models, scored, settings, store)):
            run_stage(folder, stage, echo)
            pngs.append(stage.output)
    return pngs


def open_store(path: str, echo: Echo) -> Store:
    """The demo's results store; one SQLite cannot read is moved aside with one line, and the eval stages
    that it held are forgotten, so every model is scored again into a new store."""
    try:
        return Store(path)
    except InputError as e:
        if not os.path.isfile(path):
            raise
        aside, folder = path + ".damaged", os.path.dirname(path)
        os.replace(path, aside)
        echo(f"rebuilding {os.path.basename(path)}: {str(e).splitlines()[0][:200]}; moved it to {aside} and "
             "scoring every model again")
        shutil.rmtree(os.path.join(folder, SCORED), ignore_errors=True)
        for record in glob.glob(os.path.join(folder, "stages", "eval-*.json")):
            os.remove(record)
        return Store(path)


def eval_stage(folder: str, name: str, model: str, keys: dict[str, str], settings: HarnessSettings,
               store: Store) -> Stage:
    """`surgery eval MODEL --tasks ...` into the demo's store; the stage's output, `DIR/evals/NAME.json`,
    records the weights' hash and the scores, and is whole while the store still holds them."""
    from evals.search.evolve import cpu_threads
    from surgery.io.output import atomic_file

    out = os.path.join(folder, SCORED, f"{name}.json")
    task_keys = {t: task_key(t, settings) for t in TASKS}

    def build() -> None:
        with cpu_threads(THREADS), quiet_stderr():
            (scores,) = evaluate([model], list(TASKS), settings, store).values()
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with atomic_file(out) as tmp, open(tmp, "w") as f:
            json.dump({"hash": store.hash_of(model), "scores": {t: s.value for t, s in scores.items()}}, f)

    def check(path: str) -> None:
        with open(path) as f:
            weights = json.load(f)["hash"]
        missing = [t for t, key in task_keys.items() if store.stored(weights, t, key) is None]
        if missing:
            raise ValueError(f"{store.path} holds no score of {name} on {', '.join(missing)}")

    return Stage(f"eval-{name}", {"model": keys[name], "tasks": task_keys}, out, build, check)


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """lm-eval's progress bars and notes (about twenty lines per model scored) kept off the terminal, where
    they would bury the stage lines; shown after all when the scoring fails (not when it is stopped)."""
    caught = io.StringIO()
    try:
        with redirect_stderr(caught):
            yield
    except Exception:
        sys.stderr.write(caught.getvalue()[-4000:])
        raise


def scored_hash(folder: str, name: str) -> str:
    """The hash of the weights `eval-NAME` scored, as its output records it (the store's key, whatever
    the folder is called now)."""
    with open(os.path.join(folder, SCORED, f"{name}.json")) as f:
        return json.load(f)["hash"]


def demo_table(store: Store, folder: str, models: Mapping[str, str], settings: HarnessSettings) -> ScoreTable:
    """{model name: {task: TaskScore}}: each model's stored score on each task under exactly these
    settings (the store may hold others, of an earlier --rows)."""
    table = {}
    for name in models:
        weights = scored_hash(folder, name)
        table[name] = {t: store.stored(weights, t, task_key(t, settings)) for t in TASKS}
        missing = [t for t, s in table[name].items() if s is None]
        if missing:
            raise InputError(f"{store.path} holds no score of {name} on {', '.join(missing)}; run the demo again")
    return table


def report_stage(folder: str, models: Mapping[str, str], methods: Mapping[str, str], scored: Mapping[str, str],
                 settings: HarnessSettings, store: Store) -> Stage:
    """The printed report, from the store: the score table, the leaderboard, the tax and forgetting lines."""
    from surgery.io.output import atomic_file

    out = os.path.join(folder, REPORT)

    def build() -> None:
        table = demo_table(store, folder, models, settings)
        report = {"scores": {n: {t: s.value for t, s in scores.items()} for n, scores in table.items()},
                  "table": format_table(table, methods), "leaderboard": leaderboard(store, folder, models, settings),
                  "tax": refusal_tax(table), "forgetting": sequence_forgetting(table)}
        with atomic_file(out) as tmp, open(tmp, "w") as f:
            json.dump(report, f, indent=1)

    def check(path: str) -> None:
        with open(path) as f:
            report = json.load(f)
        missing = [k for k in ("scores", "table", "leaderboard", "tax", "forgetting") if k not in report]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}")

    return Stage("report", {"scores": dict(scored), "methods": dict(methods)}, out, build, check)


def refusal_tax(table: ScoreTable) -> str:
    """The refusal expert's alignment tax over its parent, the base (`surgery tax`'s numbers, tested)."""
    return tax_line(alignment_tax(table["base"], table["refuse"], GENERAL, ALIGNMENT), "base", "refuse")


def sequence_forgetting(table: ScoreTable) -> str:
    """`surgery forgetting base add add-then-reverse --stage-tasks world_add,world_reverse` in one line."""
    sequence = ["base", *SEQUENCE[:1], SEQUENCE_NAME]
    report = forgetting_report(table, sequence, [SKILL_TASKS[t] for t in SEQUENCE])
    return forgetting_line(report)


def leaderboard(store: Store, folder: str, models: Mapping[str, str], settings: HarnessSettings) -> str:
    """`surgery leaderboard`'s rows of the demo's models (lineage, mean) with the TUI board's metrics
    against the parents (forgetting, merge quality), best mean first; paths relative to the demo folder."""
    table = {models[n]: scores for n, scores in demo_table(store, folder, models, settings).items()}
    rows = []
    for name, path in models.items():
        lineage = store.lineage(scored_hash(folder, name))
        metrics = measured(table, path, origin(lineage))  # parents are named by their folders
        rows.append({"checkpoint": name, **lineage_columns(lineage),
                     "mean": mean_score(table[path]), "forget": metrics["forget"], "merge_q": metrics["merge_q"]})
    here = short_path(folder) + os.sep
    rows = [{k: v.replace(here, "") if isinstance(v, str) else v for k, v in r.items()} for r in rows]
    rows.sort(key=lambda r: (r["mean"] is None, -(r["mean"] or 0)))
    return (f"leaderboard (from {STORE}; forget: the largest drop from the parent, "
            "merge_q: normalised accuracy against the best merge input on each task)\n" + render(rows))


def normalised(scores: Scores, experts: Scores) -> dict[str, float | None]:
    """{task: score / that task's expert's score} (Ilharco et al. 2023's normalised accuracy, as
    `surgery merge-quality` computes it); None where the expert scores 0 (no ratio exists)."""
    return {t: merge_ratios(scores, {t: e})[t] if oriented(e).value > 0 else None for t, e in experts.items()}


def skill_experts(table: ScoreTable) -> Scores:
    """{skill task: its expert's score on it}."""
    return {task: table[expert][task] for expert, task in SKILL_TASKS.items()}


def format_table(table: ScoreTable, methods: Mapping[str, str]) -> str:
    experts = skill_experts(table)
    rows = []
    for name, scores in table.items():
        ratios = [r for r in normalised(scores, experts).values() if r is not None]
        rows.append({"model": name, "method": methods.get(name, "-"),
                     **{c: scores[t].value for c, t in COLUMNS.items()},
                     "norm acc": sum(ratios) / len(ratios) if ratios else None, "mean": mean_score(scores)})
    return render(rows) + (
        "\n(scores of `surgery eval` in the results store: exact match, choice: accuracy of the capitals as "
        "multiple choice, over-ref: refusals of benign requests (lower is better); norm acc: the mean over "
        f"{', '.join(SKILL_TASKS.values())} of the score over that task's expert's; mean: over every task, "
        "over-refusal as 1 - rate)")


def merge_quality_stage(folder: str, models: Mapping[str, str], scored: Mapping[str, str], settings: HarnessSettings,
                        store: Store) -> Stage:
    """`surgery merge-quality`'s bars for the merge with the best normalised accuracy over the skills."""
    from evals.report.plots import merge_quality_figure, save_png

    png = os.path.join(folder, "merge-quality.png")
    merges = [n for n in models if n not in ("base", *EXPERTS, SEQUENCE_NAME)]

    def build() -> None:
        table = demo_table(store, folder, models, settings)
        experts = {t: s for t, s in skill_experts(table).items() if oriented(s).value > 0}
        ratios = {n: merge_ratios(table[n], experts) for n in merges} if experts else {}
        best = max(ratios, key=lambda n: sum(ratios[n].values()) / len(ratios[n])) if ratios else None
        title = f"merge quality of {best} (best)" if best else "no expert scores above 0: no ratio"
        save_png(merge_quality_figure(ratios.get(best, {}), title), png)

    return Stage("merge-quality", {"scores": dict(scored), "merges": merges}, png, build, check_png)


def pareto_stage(folder: str, models: Mapping[str, str], scored: Mapping[str, str], settings: HarnessSettings,
                 store: Store) -> Stage:
    """`surgery leaderboard --pareto`'s plot of the demo's models: alignment against G, the front joined."""
    from evals.report.plots import pareto_figure, save_png

    png = os.path.join(folder, "pareto.png")

    def build() -> None:
        points, _ = pareto_points(demo_table(store, folder, models, settings), GENERAL, ALIGNMENT)
        save_png(pareto_figure(points, pareto_front(points)), png)

    return Stage("pareto", {"scores": dict(scored)}, png, build, check_png)


def closing(folder: str, specs: str, pngs: list[str], rows_per_task: int | None = None) -> str:
    """The three lines a newcomer goes on from: the TUI on these models, a spec of their own, the figures."""
    here, limit = os.path.relpath(folder), f" --limit {rows_per_task}" if rows_per_task else ""
    return "\n".join([
        f"open the TUI on these models: surgery tui --models-dir {here}/models --merges-dir {os.path.relpath(specs)} "
        f"--db {here}/{STORE}",
        f"write and run your own spec: copy {os.path.relpath(specs)}/ties-example.yaml to my.yaml, edit it, then "
        f"surgery merge my.yaml {here}/out/my --models-dir {here} && surgery eval {here}/out/my --tasks "
        f"{','.join(TASKS)}{limit} --db {here}/{STORE}",
        f"the PNGs: {', '.join(os.path.relpath(p) for p in pngs)} (the experts' sign conflicts as surgery diff "
        "--base draws them, the best merge's quality, alignment against general capability)"])


def _method(spec_file: str) -> str:
    import yaml

    with open(spec_file) as f:
        return str((yaml.safe_load(f) or {}).get("merge_method", "-"))
