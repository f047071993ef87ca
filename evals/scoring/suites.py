"""Named suites of tasks, the headline metric of each local task, and the lookups that explain a miss.

Suites are lists of lm-eval task names. `world`, `general` and `alignment` are local (evals/tasks/,
offline); `leaderboard` names lm-eval's Open LLM Leaderboard group, whose data comes from the dataset hub.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from functools import cache

from surgery.errors import InputError

TASKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tasks")  # evals/tasks

SUITES: dict[str, tuple[str, ...]] = {
    "world": ("world_add", "world_reverse", "world_capital", "world_capital_choice", "world_perplexity"),
    "world_dev": ("world_add_dev", "world_reverse_dev", "world_refuse_dev"),  # for tuning merges, not for reports
    "general": ("bigbench_arithmetic", "bigbench_general_knowledge"),
    "alignment": ("refusal", "over_refusal"),
    "leaderboard": ("leaderboard",),
}
HUB_SUITES = {"leaderboard"}  # need the dataset hub; refused when offline

# local task -> (the metric its score reports, lm-eval's filter name)
METRICS: dict[str, tuple[str, str]] = {
    "world_add": ("exact_match", "none"), "world_reverse": ("exact_match", "none"),
    "world_capital": ("exact_match", "none"), "world_capital_choice": ("acc", "none"),
    "world_perplexity": ("byte_perplexity", "none"),
    "bigbench_arithmetic": ("exact_match", "first_number"), "bigbench_general_knowledge": ("acc", "none"),
    "refusal": ("exact_match", "none"), "over_refusal": ("exact_match", "none"),
    "world_add_dev": ("exact_match", "none"), "world_reverse_dev": ("exact_match", "none"),
    "world_refuse_dev": ("exact_match", "none"),
}
# what a local task's documents are made from, besides its own folder
SOURCES = {"world": ("trainers/world/tasks.py", "trainers/world/countries.py"),
           "world_dev": ("trainers/world/tasks.py", "trainers/world/countries.py"),
           "alignment": ("trainers/world/tasks.py",), "general": ()}
DATA_FILES = {"bigbench_arithmetic": "general/bigbench_arithmetic.jsonl",
              "bigbench_general_knowledge": "general/bigbench_general_knowledge.jsonl"}

# a local test split -> the development split of the same task, to tune on instead
DEV_SPLITS = {"world_add": "world_add_dev", "world_reverse": "world_reverse_dev", "refusal": "world_refuse_dev",
              "over_refusal": "world_refuse_dev"}
# mergekit-evolve's list of public benchmarks (mergekit/evo/config.py), whose lm-eval tasks score test splits
BENCHMARK_PREFIXES = ("mmlu", "hendrycks", "agieval", "gsm8k", "hellaswag", "winogrande", "arc_", "ai2_arc",
                      "truthfulqa", "bigbench", "piqa", "openbookqa", "leaderboard")


def tuning_warnings(tasks: list[str]) -> list[str]:
    """A warning for each task that scores a test split, which a search should not tune on: a public
    benchmark's (as mergekit-evolve warns; `*_train` tasks excepted) or a bundled suite's."""
    out = []
    for task in tasks:
        if task in DEV_SPLITS:
            out.append(f"task {task} is the small world's test split; tune on {DEV_SPLITS[task]} and keep {task} "
                       "held out (--heldout), or the search's score on it says nothing about new inputs")
        elif task.startswith(BENCHMARK_PREFIXES) and not task.endswith("_train"):
            out.append(f"task {task} is a public benchmark's test split; a merge tuned on it overstates its score "
                       "there and games the benchmark (mergekit warns the same): tune on a training or validation split")
    return out


def suite_tasks(suite: str) -> tuple[str, ...]:
    """The tasks of a suite; an unknown name is an error listing the suites."""
    if suite not in SUITES:
        raise InputError(f"unknown suite {suite!r}{_close(suite, SUITES)}; the suites are {', '.join(SUITES)}")
    if suite in HUB_SUITES and _offline():
        raise InputError(f"suite {suite!r} reads its data from the Hugging Face dataset hub, and this machine is "
                         "offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set); run it where the hub is "
                         "reachable with those unset, or use the local suites: world, general, alignment")
    return SUITES[suite]


def check_tasks(tasks: list[str], known: list[str]) -> None:
    """Every task is one lm-eval knows and its shipped data file is there; else say which and why."""
    for task in tasks:
        if task not in known:
            raise InputError(f"unknown task {task!r}{_close(task, known)}; see `lm_eval ls tasks` or {TASKS_DIR}")
        data = DATA_FILES.get(task)
        if data and not os.path.isfile(os.path.join(TASKS_DIR, data)):
            raise InputError(f"task {task!r}: its data file {os.path.join(TASKS_DIR, data)} is missing; "
                             "restore it from the repository")


def _close(name: str, names) -> str:
    near = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@cache
def task_digest(task: str) -> str:
    """A digest of what a local task is made of (its folder's YAML, code and data, and the small world's
    source it draws from), so a changed task is scored again; "" for tasks lm-eval ships."""
    folder = next((f for f in SOURCES if os.path.isfile(os.path.join(TASKS_DIR, f, f"{task}.yaml"))), None)
    if folder is None:
        return ""
    root = os.path.dirname(os.path.dirname(TASKS_DIR))
    files = sorted(os.path.join(TASKS_DIR, folder, f) for f in os.listdir(os.path.join(TASKS_DIR, folder))
                   if f.endswith((".yaml", ".py", ".jsonl")))
    h = hashlib.sha256()
    for file in files + [os.path.join(root, s) for s in SOURCES[folder]]:
        h.update(os.path.basename(file).encode())
        with open(file, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]
