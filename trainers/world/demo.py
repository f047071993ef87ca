"""The main demo (`make demo`): train the demo zoo's base and its three skill experts on this machine
(trainers/world/demo_zoo.py), merge the experts with every spec of `merges/`, score every model on
every task by exact match, and print the table: each task's score, the normalised accuracy (each
skill's score over its expert's, as `surgery merge-quality` computes it) and the mean.

Every step is a stage kept by the content hash of its inputs (trainers/world/stages.py): a second run
reuses what did not change, a run stopped with Ctrl-C resumes at the stage it was in, and a damaged
output (a truncated weights file) is built again with one line saying so.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable

from trainers.world.demo_zoo import SKILLS, Recipe
from trainers.world.stages import Stage, file_digest, run_stage
from trainers.world.tasks import TASKS

EXPERTS = SKILLS  # the names merges/*.yaml use
WORLD_SOURCES = ("tasks.py", "countries.py", "demo_zoo.py")  # what the data and the recipes are made by


def check_model(folder: str) -> None:
    """A finished model: its weights read with the project's reader (a truncated file is named), its lineage there."""
    from surgery.io.reader import ModelFolder

    ModelFolder(folder).close()
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"{folder} has no config.json")


def _publish(final: str, link: str) -> None:
    """A run's final folder, linked at a stable name (`models/base`, `models/add`, ...)."""
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.relpath(final, os.path.dirname(link)), link)


def data_stage(models: str, recipe: Recipe) -> Stage:
    from surgery.io.output import atomic_folder
    from trainers.world.demo_zoo import write_data

    here = os.path.dirname(os.path.abspath(__file__))
    data = os.path.join(models, "data")

    def build() -> None:
        with atomic_folder(data) as tmp:
            write_data(tmp, recipe)

    def check(folder: str) -> None:
        for name in [f"{t}/{s}.jsonl" for t in TASKS for s in ("train", "test")] + ["echo/train.jsonl"]:
            with open(os.path.join(folder, name)) as f:
                [json.loads(line) for line in f]

    inputs = {"rows": recipe.train_rows, "seed": recipe.seed,
              "sources": file_digest(*(os.path.join(here, s) for s in WORLD_SOURCES))}
    return Stage("data", inputs, data, build, check)


def init_stage(models: str, recipe: Recipe) -> Stage:
    from trainers.world.zoo import init_model

    init = os.path.join(models, "init")
    return Stage("init", {"shape": dict(recipe.shape), "seed": recipe.seed}, init,
                 lambda: init_model(init, recipe.seed, shape=dict(recipe.shape)), check_model)


def base_stage(models: str, recipe: Recipe, keys: dict[str, str]) -> Stage:
    from trainers.world.demo_zoo import train_base

    run, link = os.path.join(models, "runs", "base"), os.path.join(models, "base")

    def build() -> None:
        _publish(train_base(os.path.join(models, "data"), os.path.join(models, "init"), run, recipe), link)

    inputs = {"data": keys["data"], "init": keys["init"], "steps": recipe.base_steps, "lr": recipe.base_lr,
              "batch": recipe.batch, "seed": recipe.seed}
    return Stage("base", inputs, link, build, check_model, scratch=(run,))


def expert_stage(models: str, recipe: Recipe, task: str, keys: dict[str, str]) -> Stage:
    from trainers.world.demo_zoo import train_expert

    run, link = os.path.join(models, "runs", task), os.path.join(models, task)

    def build() -> None:
        _publish(train_expert(os.path.join(models, "data"), os.path.join(models, "base"), task, run, recipe), link)

    inputs = {"data": keys["data"], "base": keys["base"], "task": task, "steps": recipe.steps(task),
              "lr": recipe.expert_lr, "replay": recipe.replay, "batch": recipe.batch, "seed": recipe.seed}
    return Stage(task, inputs, link, build, check_model, scratch=(run,))


def merge_stage(folder: str, spec_file: str, keys: dict[str, str]) -> Stage:
    from surgery.merge.engine import Options, run_merge
    from surgery.merge.plan import plan_merge
    from surgery.merge.spec import load_spec

    name = os.path.basename(spec_file).removesuffix(".yaml")
    out = os.path.join(folder, "out", name)

    def build() -> None:
        run_merge(plan_merge(load_spec(spec_file), spec_file, models_dir=folder), out, Options(force=True))

    inputs = {"spec": file_digest(spec_file), "models": {n: keys[n] for n in ("base", *EXPERTS)}}
    return Stage(f"merge-{name}", inputs, out, build, check_model)


def score_stage(folder: str, name: str, model: str, keys: dict[str, str], rows_per_task: int | None) -> Stage:
    from surgery.io.output import atomic_file

    out = os.path.join(folder, "scores", f"{name}.json")

    def build() -> None:
        scores = score_table({name: model}, os.path.join(folder, "models", "data"), rows_per_task)[name]
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with atomic_file(out) as tmp, open(tmp, "w") as f:
            json.dump(scores, f)

    def check(path: str) -> None:
        with open(path) as f:
            scores = json.load(f)
        if set(scores) != set(TASKS):
            raise ValueError(f"{path} does not score every task")

    inputs = {"model": keys[name], "data": keys["data"], "rows": rows_per_task}
    return Stage(f"score-{name}", inputs, out, build, check)


def conflicts_stage(folder: str, keys: dict[str, str]) -> Stage:
    """The experts' task vectors compared as `surgery diff --base` does: sign conflicts per layer and
    module type, cosines and sizes, as a heat map PNG."""
    from surgery.diagnose.diff import diff_models
    from surgery.diagnose.diff_report import colour_ranges, grids
    from surgery.diagnose.heatmap import save_heatmap

    png = os.path.join(folder, "sign-conflicts.png")
    models = os.path.join(folder, "models")

    def build() -> None:
        result = diff_models([os.path.join(models, t) for t in EXPERTS], os.path.join(models, "base"))
        save_heatmap(png, *grids(result), colour_ranges(result.columns()))

    def check(path: str) -> None:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n" or os.path.getsize(path) < 1000:
                raise ValueError(f"{path} is not a whole PNG")

    return Stage("sign-conflicts", {"models": {n: keys[n] for n in ("base", *EXPERTS)}}, png, build, check)


def score_table(models: dict[str, str], data: str, rows_per_task: int | None = None) -> dict[str, dict[str, float]]:
    """{model name: {task: exact match on its test split (or its first `rows_per_task` rows)}}."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.world.score import exact_match

    rows = {t: [json.loads(line) for line in open(os.path.join(data, t, "test.jsonl"))][:rows_per_task] for t in TASKS}
    table = {}
    for name, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        table[name] = {t: exact_match(model, tokenizer, rows[t]) for t in TASKS}
    return table


def build_models(folder: str, recipe: Recipe, echo: Callable[[str], None]) -> dict[str, str]:
    """The data, base and experts under `folder/models`, each a stage; returns {stage name: key}."""
    models = os.path.join(folder, "models")
    os.makedirs(models, exist_ok=True)
    keys = {"data": run_stage(folder, data_stage(models, recipe), echo),
            "init": run_stage(folder, init_stage(models, recipe), echo)}
    keys["base"] = run_stage(folder, base_stage(models, recipe, keys), echo)
    for task in EXPERTS:
        keys[task] = run_stage(folder, expert_stage(models, recipe, task, keys), echo)
    return keys


def run_world_demo(folder: str, specs: str, recipe: Recipe | None = None, echo: Callable[[str], None] = print,
                   rows_per_task: int | None = None) -> dict[str, dict[str, float]]:
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder, recipe = os.path.abspath(folder), recipe or Recipe()
    keys = build_models(folder, recipe, echo)
    models = {n: os.path.join(folder, "models", n) for n in ("base", *EXPERTS)}
    methods = {}
    for spec_file in sorted(glob.glob(os.path.join(specs, "*.yaml"))):
        name = os.path.basename(spec_file).removesuffix(".yaml")
        keys[name] = run_stage(folder, merge_stage(folder, spec_file, keys), echo)
        models[name], methods[name] = os.path.join(folder, "out", name), _method(spec_file)
    table = {}
    for name, path in models.items():
        run_stage(folder, score_stage(folder, name, path, keys, rows_per_task), echo)
        with open(os.path.join(folder, "scores", f"{name}.json")) as f:
            table[name] = json.load(f)
    png = os.path.join(folder, "sign-conflicts.png")
    run_stage(folder, conflicts_stage(folder, keys), echo)
    echo(format_table(table, methods))
    with open(os.path.join(folder, "scores.json"), "w") as f:
        json.dump(table, f, indent=2)
    echo(closing(folder, specs, [png]))
    return table


def closing(folder: str, specs: str, pngs: list[str]) -> str:
    """The three lines a newcomer goes on from: the TUI on these models, a spec of their own, the figures."""
    here = os.path.relpath(folder)
    return "\n".join([
        f"open the TUI on these models: surgery tui --models-dir {here}/models --merges-dir {os.path.relpath(specs)}",
        f"write and run your own spec: copy {os.path.relpath(specs)}/ties-example.yaml to my.yaml, edit it, then "
        f"surgery merge my.yaml {here}/out/my --models-dir {here}",
        f"the PNGs: {', '.join(os.path.relpath(p) for p in pngs)} (the experts' sign conflicts, as surgery diff "
        "--base draws them)"])


def _method(spec_file: str) -> str:
    import yaml

    with open(spec_file) as f:
        return str((yaml.safe_load(f) or {}).get("merge_method", "-"))


def normalised(scores: dict[str, float], experts: dict[str, float]) -> dict[str, float | None]:
    """{skill: score / that skill's expert's score} (Ilharco et al. 2023's normalised accuracy, as
    evals' merge_ratios computes it); None where the expert scores 0 (no ratio exists)."""
    return {t: scores[t] / e if e > 0 else None for t, e in experts.items()}


def format_table(table: dict[str, dict[str, float]], methods: dict[str, str]) -> str:
    experts = {t: table[t][t] for t in EXPERTS if t in table}
    tasks = list(TASKS)
    lines = [f"{'model':<26} {'method':<14} " + " ".join(f"{t:>8}" for t in tasks) + f" {'norm acc':>8} {'mean':>6}"]
    for name, scores in table.items():
        ratios = [r for r in normalised(scores, experts).values() if r is not None]
        norm = f"{sum(ratios) / len(ratios):>8.2f}" if ratios else f"{'n/a':>8}"
        mean = sum(scores[t] for t in tasks) / len(tasks)
        lines.append(f"{name:<26} {methods.get(name, '-'):<14} " + " ".join(f"{scores[t]:>8.2f}" for t in tasks)
                     + f" {norm} {mean:>6.2f}")
    return "\n".join(lines) + ("\n(exact match on each task's held-out test split; norm acc: the mean over "
                               f"{', '.join(EXPERTS)} of the score over that task's expert's)")
