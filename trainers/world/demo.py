"""The main demo: train the small world's base and three task experts on this machine, merge the
experts with every spec of `merges/`, and score every model on every task by exact match.

The table it prints is the point of the bench in one screen: each expert is best at its own task and
has drifted on the others; a good merge keeps several skills at once.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable

from surgery.errors import OutputError
from surgery.io.output import atomic_file
from trainers.world.tasks import TASKS
from trainers.world.zoo import build_base, build_expert

EXPERTS = ("add", "reverse", "refuse")  # the names merges/*.yaml use; `capital` is kept as a bystander


def ensure_zoo(models: str, base_steps: int, expert_steps: int, echo: Callable[[str], None]) -> dict[str, str]:
    """Train what `models/` lacks (a finished model is kept between runs); returns {name: folder}."""
    found = {}
    for name in ("base", *EXPERTS):
        folder = os.path.join(models, name)
        if not os.path.isfile(os.path.join(folder, "lineage.json")):
            if os.path.lexists(os.path.join(models, "runs", name)):
                raise OutputError(f"{os.path.join(models, 'runs', name)} holds an unfinished run of {name}; "
                                  "delete that folder to train it again")
            echo(f"training {name} in {folder} ({base_steps if name == 'base' else expert_steps} steps)")
            folder = (build_base(models, base_steps) if name == "base" else build_expert(models, name, expert_steps))
        found[name] = folder
    return found


def merge_all(folder: str, specs: str) -> list[tuple[str, str, float]]:
    """Every spec in `specs` merged into `folder/out/<spec>`; returns (name, method, seconds)."""
    from surgery.merge.engine import Options, run_merge
    from surgery.merge.plan import plan_merge
    from surgery.merge.spec import load_spec

    done = []
    for file in sorted(glob.glob(os.path.join(specs, "*.yaml"))):
        name, start = os.path.basename(file).removesuffix(".yaml"), time.perf_counter()
        plan = plan_merge(load_spec(file), file, models_dir=folder)
        run_merge(plan, os.path.join(folder, "out", name), Options(force=True))
        done.append((name, plan.method.name, time.perf_counter() - start))
    return done


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


def run_world_demo(folder: str, specs: str, base_steps: int = 2000, expert_steps: int = 200,
                   echo: Callable[[str], None] = print,
                   rows_per_task: int | None = None) -> dict[str, dict[str, float]]:
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder = os.path.abspath(folder)
    models = os.path.join(folder, "models")
    zoo = ensure_zoo(models, base_steps, expert_steps, echo)
    merged = merge_all(folder, specs)
    table = score_table({**zoo, **{n: os.path.join(folder, "out", n) for n, _, _ in merged}},
                        os.path.join(models, "data"), rows_per_task)
    echo(format_table(table, {n: m for n, m, _ in merged}))
    with atomic_file(os.path.join(folder, "scores.json")) as tmp, open(tmp, "w") as f:
        json.dump(table, f, indent=2)
    return table


def format_table(table: dict[str, dict[str, float]], methods: dict[str, str]) -> str:
    tasks = list(TASKS)
    lines = [f"{'model':<26} {'method':<14} " + " ".join(f"{t:>8}" for t in tasks) + f" {'mean':>6}"]
    for name, scores in table.items():
        mean = sum(scores.values()) / len(scores)
        lines.append(f"{name:<26} {methods.get(name, '-'):<14} " + " ".join(f"{scores[t]:>8.2f}" for t in tasks)
                     + f" {mean:>6.2f}")
    return "\n".join(lines) + "\n(exact match on each task's held-out test split)"
