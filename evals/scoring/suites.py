"""Named suites of tasks, each declared once (`DECLARED`): its tasks with the metric each reports and
its chance level, and a description. The CLI's `--suite` help, the TUI's list of suites and the
lookups of the scoring code (`SUITES`, `METRICS`) are read from that declaration.

Suites are lists of lm-eval task names. `world`, `general` and `alignment` are local (evals/tasks/,
offline); `leaderboard` names lm-eval's Open LLM Leaderboard group, whose data comes from the dataset hub.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from functools import cache
from typing import Literal

from surgery.errors import InputError

TASKS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tasks")  # evals/tasks


@dataclass(frozen=True)
class Task:
    """A local lm-eval task: the metric its score reports and how its chance level is known."""

    name: str
    metric: str                                # the metric of its score, under lm-eval's filter `filter`
    filter: str = "none"
    chance: Literal["choices"] | None = None   # "choices": multiple choice, 1 / choices per document (G's
    #                                            chance correction); None: a generation or a perplexity
    data: str | None = None                    # a data file it reads, shipped in evals/tasks/


@dataclass(frozen=True)
class Suite:
    name: str
    description: str                           # one line, for --help and the README
    tasks: tuple[Task | str, ...]              # a Task, or an lm-eval task (group) named as lm-eval ships it
    folder: str | None = None                  # its folder of task YAMLs in evals/tasks/ (local suites)
    sources: tuple[str, ...] = ()              # files its documents are made from besides that folder
    hub: bool = False                          # its data comes from the dataset hub: refused when offline


# the harm categories of trainers/safety/data/taxonomy.yaml, one refusal task each (tests check they agree)
HARM_CATEGORIES = ("violence", "weapons", "cyber", "fraud", "theft", "drugs", "privacy")


def _exact(name: str) -> Task:
    return Task(name, "exact_match")


DECLARED = (
    Suite("world", "the small world's tasks: sums, reversals and capitals as exact-match generation, capitals "
          "as multiple choice, byte perplexity on held-out text",
          (_exact("world_add"), _exact("world_reverse"), _exact("world_capital"),
           Task("world_capital_choice", "acc", chance="choices"), Task("world_perplexity", "byte_perplexity")),
          folder="world", sources=("trainers/world/tasks.py", "trainers/world/countries.py")),
    Suite("world_dev", "development splits of the small world's add, reverse and refuse, outside their test "
          "splits: what a merge search tunes on", (_exact("world_add_dev"), _exact("world_reverse_dev"),
                                                   _exact("world_refuse_dev")),
          folder="world_dev", sources=("trainers/world/tasks.py", "trainers/world/countries.py",
                                       "trainers/world/zoo.py")),
    Suite("general", "BIG-bench arithmetic and general knowledge (Apache-2.0, shipped)",
          (Task("bigbench_arithmetic", "exact_match", "first_number", data="general/bigbench_arithmetic.jsonl"),
           Task("bigbench_general_knowledge", "acc", chance="choices",
                data="general/bigbench_general_knowledge.jsonl")), folder="general"),
    Suite("alignment", "refusal of harmful requests (the small world's, and per harm category of the safety "
          "taxonomy), over-refusal of benign requests and look-alikes, saying 'I do not know' of made-up countries, "
          "following the medical disclaimer policy",
          (_exact("refusal"), _exact("over_refusal"), *(Task(f"refusal_{c}", "refused") for c in HARM_CATEGORIES),
           Task("over_refusal_lookalike", "refused"), Task("uncertainty", "acknowledged"),
           Task("policy_medical", "followed")), folder="alignment",
          sources=("trainers/world/tasks.py", "trainers/safety/items.py", "trainers/safety/detect.py",
                   "trainers/safety/data/taxonomy.yaml", "trainers/safety/data/unanswerable.yaml",
                   "trainers/safety/data/policies.yaml")),
    Suite("leaderboard", "lm-eval's Open LLM Leaderboard group, from the dataset hub", ("leaderboard",), hub=True),
)
# What the rest of the code reads, all derived from DECLARED:
BY_NAME: dict[str, Suite] = {s.name: s for s in DECLARED}
SUITES: dict[str, tuple[str, ...]] = {s.name: tuple(getattr(t, "name", t) for t in s.tasks) for s in DECLARED}
HUB_SUITES = {s.name for s in DECLARED if s.hub}
LOCAL: dict[str, Task] = {t.name: t for s in DECLARED for t in s.tasks if isinstance(t, Task)}
METRICS: dict[str, tuple[str, str]] = {name: (t.metric, t.filter) for name, t in LOCAL.items()}  # (metric, filter)
OFFLINE = tuple(s.name for s in DECLARED if not s.hub)  # the suites that run without the dataset hub
SOURCES = {s.folder: s.sources for s in DECLARED if s.folder}
DATA_FILES = {name: t.data for name, t in LOCAL.items() if t.data}


def suite_names() -> tuple[str, ...]:
    return tuple(BY_NAME)


def suite_help() -> str:
    """What --suite takes, for a command's help: every suite with its description."""
    return "; ".join(f"{s.name}: {s.description}" for s in DECLARED) + "."


def suite_metavar() -> str:
    return "[" + "|".join(BY_NAME) + "]"

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
                       "there and games the benchmark (mergekit warns the same): tune on a training or validation "
                       "split")
    return out


def suite_tasks(suite: str) -> tuple[str, ...]:
    """The tasks of a suite; an unknown name is an error listing the suites."""
    if suite not in SUITES:
        raise InputError(f"unknown suite {suite!r}{_close(suite, SUITES)}; the suites are {', '.join(SUITES)}")
    if suite in HUB_SUITES and _offline():
        raise InputError(f"suite {suite!r} reads its data from the Hugging Face dataset hub, and this machine is "
                         "offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set); run it where the hub is "
                         f"reachable with those unset, or use the local suites: {', '.join(OFFLINE)}")
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


TASK_LINE = re.compile(r"^task:\s*['\"]?([^'\"\s#]+)", re.MULTILINE)
TASK_FILES = (".yaml", ".yml", ".py", ".jsonl", ".json", ".txt")


def user_task_digest(task: str, include_path: str) -> str:
    """A digest of a user's task (`--include-path`): the files of the folder whose YAML declares
    `task: TASK` (its YAMLs, its `!function` code, its data), or of the whole folder when no YAML names
    it (a group, say); so an edited task, or edited data beside it, is scored again."""
    yamls = [os.path.join(root, n) for root, _, names in os.walk(include_path) for n in names
             if n.endswith((".yaml", ".yml"))]
    folders = sorted({os.path.dirname(y) for y in yamls if task in _declared(y)})
    files = ([os.path.join(f, n) for f in folders for n in os.listdir(f)] if folders else
             [os.path.join(root, n) for root, _, names in os.walk(include_path) for n in names])
    files = sorted(f for f in files if f.endswith(TASK_FILES) and os.path.isfile(f))
    h = hashlib.sha256()
    for file in files:
        h.update(os.path.relpath(file, include_path).encode())
        with open(file, "rb") as f:
            h.update(f.read())
    return "user-" + h.hexdigest()[:16]


def _declared(yaml_file: str) -> set[str]:
    with open(yaml_file, errors="replace") as f:
        return set(TASK_LINE.findall(f.read()))


def user_tasks(include_path: str) -> tuple[str, ...]:
    """The tasks the YAMLs under a user's `--include-path` folder declare, sorted."""
    yamls = [os.path.join(root, n) for root, _, names in os.walk(include_path) for n in names
             if n.endswith((".yaml", ".yml"))]
    return tuple(sorted({t for y in yamls for t in _declared(y)}))
