"""The models of the main demo (`make demo`, whose whole loop is evals/pipelines/demo.py): the demo zoo's
base and its three skill experts trained on this machine (trainers/world/demo_zoo.py), the experts
merged with every spec of `merges/`, a two-stage sequence (the `add` expert then fine-tuned on
`reverse`) for the forgetting measures, and the experts' sign-conflict map, each as a stage.

Every step is a stage kept by the content hash of its inputs (trainers/world/stages.py): a second run
reuses what did not change, a run stopped with Ctrl-C resumes at the stage it was in, and a damaged
output (a truncated weights file) is built again with one line saying so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from trainers.world.demo_zoo import SKILLS, Recipe
from trainers.world.stages import Stage, file_digest, run_stage
from trainers.world.tasks import TASKS

EXPERTS = SKILLS  # the names merges/*.yaml use
SEQUENCE = ("add", "reverse")  # the two-stage sequence: the `add` expert, then it fine-tuned on `reverse`
SEQUENCE_NAME = "add-then-reverse"
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


def sequence_stage(models: str, recipe: Recipe, keys: dict[str, str]) -> Stage:
    """The second stage of the sequence base -> add -> add-then-reverse: the `add` expert fine-tuned on
    `reverse` as the experts are (the base's data replayed, none of `add`'s), for the forgetting measures."""
    from trainers.world.demo_zoo import train_expert

    first, then = SEQUENCE
    run, link = os.path.join(models, "runs", SEQUENCE_NAME), os.path.join(models, SEQUENCE_NAME)

    def build() -> None:
        _publish(train_expert(os.path.join(models, "data"), os.path.join(models, first), then, run, recipe,
                              steps=recipe.sequence_steps), link)

    inputs = {"data": keys["data"], "start": keys[first], "task": then, "steps": recipe.sequence_steps,
              "lr": recipe.expert_lr, "replay": recipe.replay, "batch": recipe.batch, "seed": recipe.seed}
    return Stage(SEQUENCE_NAME, inputs, link, build, check_model, scratch=(run,))


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

    return Stage("sign-conflicts", {"models": {n: keys[n] for n in ("base", *EXPERTS)}}, png, build, check_png)


def check_png(path: str) -> None:
    """A figure written whole: the PNG signature first and its closing IEND chunk last."""
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, os.path.getsize(path) - 12))
        tail = f.read()
    if head != b"\x89PNG\r\n\x1a\n" or tail[4:8] != b"IEND":
        raise ValueError(f"{path} is not a whole PNG (its signature or its closing IEND chunk is missing)")


def build_base(folder: str, recipe: Recipe, echo: Callable[[str], None]) -> dict[str, str]:
    """The data and the base under `folder/models` (`base/`, `data/<task>/{train,test}.jsonl`), each a
    stage; returns {stage name: key}. The base knows none of the skills: what a continual-learning
    sequence of them starts from (evals/pipelines/continual_proof.py)."""
    models = os.path.join(folder, "models")
    os.makedirs(models, exist_ok=True)
    keys = {"data": run_stage(folder, data_stage(models, recipe), echo),
            "init": run_stage(folder, init_stage(models, recipe), echo)}
    keys["base"] = run_stage(folder, base_stage(models, recipe, keys), echo)
    return keys


def build_models(folder: str, recipe: Recipe, echo: Callable[[str], None]) -> dict[str, str]:
    """The data, base and experts under `folder/models`, each a stage; returns {stage name: key}."""
    models = os.path.join(folder, "models")
    keys = build_base(folder, recipe, echo)
    for task in EXPERTS:
        keys[task] = run_stage(folder, expert_stage(models, recipe, task, keys), echo)
    return keys
