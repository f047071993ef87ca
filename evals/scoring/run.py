"""Evaluate checkpoints on tasks, served from the results store where the same weights were already
scored under the same settings; only the missing tasks go to lm-eval."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version

from evals.scoring import harness
from evals.scoring.checkpoints import Checkpoint, lineage, open_checkpoint
from evals.scoring.scores import ScoreTable
from evals.scoring.store import Store
from evals.scoring.suites import METRICS, check_tasks, task_digest, user_task_digest
from evals.scoring.template_check import template_warnings


@dataclass(frozen=True)
class Batch:
    """Checkpoints and tasks checked for an evaluation: what may be checked before a store is opened."""

    checkpoints: tuple[Checkpoint, ...]
    tasks: tuple[str, ...]
    manager: object  # lm-eval's task manager; None when every task is local


def prepare(paths: Sequence[str], tasks: Sequence[str], include_path: str | None = None) -> Batch:
    """Every folder loadable and hashed, every task known (a user's task in `include_path` too): errors
    come before anything is stored or run."""
    checkpoints = tuple(open_checkpoint(p) for p in paths)
    return Batch(checkpoints, tuple(tasks), _checked(list(tasks), include_path))


def evaluate(paths: Sequence[str], tasks: Sequence[str], settings: harness.HarnessSettings, store: Store,
             force: bool = False, say: Callable[[str], None] = lambda _: None,
             on_task: Callable[[str, int, int], None] | None = None) -> ScoreTable:
    """Scores of each checkpoint folder on `tasks`, keyed by absolute path; runs what the store lacks.
    With `on_task`, the missing tasks run one at a time and `on_task(task, done, total)` is called before each."""
    return score(prepare(paths, tasks, settings.include_path), settings, store, force, say, on_task)


def score(batch: Batch, settings: harness.HarnessSettings, store: Store, force: bool = False,
          say: Callable[[str], None] = lambda _: None,
          on_task: Callable[[str, int, int], None] | None = None) -> ScoreTable:
    """`evaluate` of a prepared batch."""
    checkpoints, tasks, manager = batch.checkpoints, list(batch.tasks), batch.manager
    for warning in template_warnings([c.path for c in checkpoints], settings.apply_chat_template):
        say(f"warning: {warning}")
    table = {}
    for checkpoint in checkpoints:
        name = os.path.abspath(checkpoint.path)
        store.register(name, checkpoint, lineage(checkpoint))
        keys = {t: task_key(t, settings) for t in tasks}
        missing = [t for t in tasks if force or not _have(store, checkpoint.hash, t, keys[t])]
        say(f"{name}: {len(tasks) - len(missing)} task(s) from the store, {len(missing)} to run")
        if missing:
            results = _run(checkpoint, missing, settings, manager, on_task)
            put_results(store, name, checkpoint.hash, results, settings)
        table[name] = {k: v for t in tasks for k, v in _found(store, checkpoint.hash, t, settings).items()}
    return table


def put_results(store: Store, name: str, hash: str, results: dict[str, harness.Evaluated],
                settings: harness.HarnessSettings) -> None:
    """One run's results stored under the weights `hash`, each task (a group's subtasks too) under its own key."""
    store.put(name, hash, asdict(settings), {t: task_key(t, settings) for t in results}, version("lm_eval"), results)


def task_key(task: str, settings: harness.HarnessSettings) -> str:
    """What a stored score is matched on besides the weights: the settings that change it, and the
    digest of the task's own files."""
    digest = task_digest(task) or (user_task_digest(task, settings.include_path) if settings.include_path else "")
    return f"{settings.key};task={digest}" if digest else settings.key


def _have(store: Store, hash: str, task: str, key: str) -> bool:
    if store.stored(hash, task, key) is not None:
        return True
    return bool(store.scores(hash, [task], key)) and task not in METRICS  # a group: its subtasks


def _found(store: Store, hash: str, task: str, settings: harness.HarnessSettings) -> dict:
    exact = store.stored(hash, task, task_key(task, settings))
    return {task: exact} if exact else store.scores(hash, [task], settings.key)


def _checked(tasks: list[str], include_path: str | None = None):
    """Check task names before any model loads; lm-eval's task index is built only for non-local tasks."""
    if all(t in METRICS for t in tasks):
        check_tasks(tasks, list(METRICS))
        return None
    manager = harness.task_manager(include_path)
    check_tasks(tasks, harness.known_tasks(manager))
    return manager


def _run(checkpoint: Checkpoint, tasks: list[str], settings: harness.HarnessSettings, manager,
         on_task: Callable[[str, int, int], None] | None = None) -> dict:
    path, adapter = (checkpoint.base.path, checkpoint.path) if checkpoint.base is not None else (checkpoint.path, None)
    if on_task is not None:
        return harness.evaluate_each(path, tasks, settings, adapter=adapter, manager=manager, on_task=on_task)
    return harness.evaluate_path(path, tasks, settings, adapter=adapter, manager=manager)
