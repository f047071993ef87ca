"""Runs tasks through lm-eval (EleutherAI's LM Evaluation Harness) and returns TaskScores with
per-document outcomes. The only module that imports lm_eval.

lm-eval's request cache is never used: it is keyed by the request text alone, so a second model
would be served the first one's answers. Results are cached by weight hash in evals/scoring/store.py instead.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from evals.scoring.scores import TaskScore
from evals.scoring.suites import LOCAL, METRICS, OFFLINE, TASKS_DIR, check_tasks
from surgery.errors import InputError

BATCH_SIZE = 8  # a fixed size: lm-eval's "auto" probes memory, slowly on CPU


@dataclass(frozen=True)
class HarnessSettings:
    """How the tasks are run; `limit` and `num_fewshot` change the score, the rest only its speed."""

    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int | str = BATCH_SIZE
    device: str | None = None  # None: cuda when there is one, else cpu
    backend: str = "hf"  # lm-eval's model type: hf, vllm, ...
    model_args: dict = field(default_factory=dict)  # passed through, e.g. {"parallelize": True} for accelerate
    apply_chat_template: bool = False  # format prompts with the tokenizer's chat template (lm-eval's option)
    include_path: str | None = None  # a folder of the user's task YAMLs; its files' digest is in each task's key

    @property
    def key(self) -> str:
        """What stored scores are matched on, besides the weights and the task."""
        chat = ";chat" if self.apply_chat_template else ""  # absent by default: keys stored before it still match
        return f"limit={self.limit};fewshot={self.num_fewshot}{chat}"


@dataclass(frozen=True)
class Evaluated:
    score: TaskScore
    version: str
    num_fewshot: int


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@cache
def task_manager(include_path: str | None = None):
    """lm-eval's task index with the local suites (and a folder of the user's tasks); built once per
    process and folder (it reads every task YAML)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[TASKS_DIR, include_path] if include_path else TASKS_DIR)


def known_tasks(manager) -> list[str]:
    return list(manager.all_tasks)


def evaluate_path(path: str, tasks: list[str], settings: HarnessSettings, adapter: str | None = None,
                  manager=None) -> dict[str, Evaluated]:
    """Score the model folder `path` (with `adapter`, a PEFT folder over it) on `tasks`."""
    args = {"pretrained": path, **({"peft": adapter} if adapter else {}), **settings.model_args}
    return _run(settings.backend, args, tasks, settings, manager)


def evaluate_each(path: str, tasks: list[str], settings: HarnessSettings, adapter: str | None = None,
                  manager=None, on_task: Callable[[str, int, int], None] = lambda task, done, total: None,
                  ) -> dict[str, Evaluated]:
    """`evaluate_path`, one task at a time on the model loaded once, calling `on_task(task, done, total)`
    before each: progress a person can watch (one lm-eval run goes through all its tasks' requests at
    once, by request type, and says nothing until the end). The scores are the same."""
    from lm_eval.api.registry import get_model

    args = {"pretrained": path, **({"peft": adapter} if adapter else {}), **settings.model_args}
    lm = get_model(settings.backend).create_from_arg_obj(
        args, {"batch_size": settings.batch_size, "device": settings.device or default_device()})
    out: dict[str, Evaluated] = {}
    for done, task in enumerate(tasks):
        on_task(task, done, len(tasks))
        out |= _run(lm, None, [task], settings, manager)
    return out


def evaluate_model(model, tokenizer, tasks: list[str], settings: HarnessSettings, manager=None) -> dict[str, Evaluated]:
    """Score an already-loaded transformers model without saving it."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size,
              device=settings.device or default_device())
    return _run(lm, None, tasks, settings, manager)


@cache
def quiet_git_describe() -> None:
    """lm-eval records `git describe` of the current folder with git's stderr on the terminal, so outside a
    checkout every run prints `fatal: not a git repository`. Its lookup is replaced by the same command with
    stderr captured, giving what lm-eval's own fallback gives outside a checkout (None)."""
    import lm_eval.evaluator

    lm_eval.evaluator.get_git_commit_hash = git_describe


def git_describe() -> str | None:
    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True)
    except OSError:  # no git
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _run(model, model_args, tasks: list[str], settings: HarnessSettings, manager) -> dict[str, Evaluated]:
    import lm_eval

    quiet_git_describe()
    manager = manager or task_manager(settings.include_path)
    check_tasks(tasks, known_tasks(manager))
    try:
        out = lm_eval.simple_evaluate(
            model=model, model_args=model_args, tasks=list(tasks), num_fewshot=settings.num_fewshot,
            batch_size=settings.batch_size, device=settings.device or default_device(), limit=settings.limit,
            use_cache=None, cache_requests=False, log_samples=True, task_manager=manager,
            apply_chat_template=settings.apply_chat_template)
    except OSError as e:  # connection errors and missing hub datasets are OSErrors
        hub = [t for t in tasks if t not in METRICS]
        if not hub:
            raise
        raise InputError(f"lm-eval could not get the data of {', '.join(hub)} ({type(e).__name__}: {e}); these "
                         "tasks read the Hugging Face dataset hub: run where it is reachable, with HF_HUB_OFFLINE "
                         f"and HF_DATASETS_OFFLINE unset, or use the local suites ({', '.join(OFFLINE)})") from None
    if out is None:  # lm-eval returns None on ranks other than the first
        return {}
    return {task: _evaluated(task, out) for task in out["samples"]}


def _evaluated(task: str, out: dict) -> Evaluated:
    results = out["results"][task]
    metric, filt = METRICS.get(task) or _first_metric(task, results)
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    samples = [s for s in samples if s.get("filter", filt) == filt]
    stderr = results.get(f"{metric}_stderr,{filt}")
    score = TaskScore(task=task, metric=metric, value=float(results[f"{metric},{filt}"]),
                      stderr=float(stderr) if isinstance(stderr, (int, float)) else None, n=len(samples),
                      chance=_chance(samples, out, task), outcomes=tuple(_outcome(s[metric]) for s in samples))
    return Evaluated(score, str(out["versions"].get(task, "")), int(out["n-shot"].get(task, 0) or 0))


def _first_metric(task: str, results: dict) -> tuple[str, str]:
    for key in results:
        if "," in key and "_stderr" not in key:
            metric, filt = key.split(",", 1)
            return metric, filt
    raise InputError(f"task {task!r}: lm-eval reported no metric; check the task's metric_list")


def _outcome(value) -> float:
    """A document's value: the metric itself, or for perplexities (log-likelihood, words) its perplexity."""
    if isinstance(value, (list, tuple)):
        loglikelihood, units = value
        return math.exp(-loglikelihood / units)
    return float(value)


def _chance(samples: list[dict], out: dict, task: str) -> float | None:
    """Mean of 1 / choices over documents, for a task declared multiple choice (or, for lm-eval's own
    tasks, configured so); None otherwise."""
    declared = LOCAL.get(task)
    choices = declared.chance == "choices" if declared else out["configs"][task].get("output_type") == "multiple_choice"
    if not choices or not samples:
        return None
    return sum(1 / len(s["arguments"]) for s in samples) / len(samples)
