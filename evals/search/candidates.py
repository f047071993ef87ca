"""Merge search with evals in the loop: what greedy soup (evals/search/soup.py) and the one-parameter sweep
(evals/search/sweep.py) share. Each candidate is merged by the engine in this process into a folder of its
own, then scored through the harness, so its scores land in the results store under its weight hash
with the merge's provenance (method, spec, input models) as lineage, and show on the leaderboard.

Both searches take the scorer as a function of a checkpoint folder, so they can be run and tested
without lm-eval; `harness_scorer` is the real one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

from evals.analysis.metrics import oriented
from evals.report.leaderboard import mean_score
from evals.scoring.harness import HarnessSettings
from evals.scoring.scores import TaskScore
from evals.scoring.store import Store
from surgery.errors import InputError

Scores = dict[str, TaskScore]
Scorer = Callable[[str], Scores]  # checkpoint folder -> task -> score


def merge_spec(data: dict, file: str, out: str, models_dir: str | None = None) -> str:
    """Validate `data` as a merge spec (errors located as `file: field: problem`), plan it and merge it
    into `out`, replacing an earlier output there; returns the output folder."""
    from surgery.merge.engine import Options, run_merge

    return run_merge(plan_spec(data, file, models_dir), out, Options(force=True))


def plan_spec(data: dict, file: str, models_dir: str | None = None):
    """The engine's plan of `data`: every model, name, shape and parameter checked, no tensor read."""
    from surgery.merge.plan import plan_merge
    from surgery.merge.spec import parse_spec

    return plan_merge(parse_spec(data, file), file, models_dir=models_dir)


def check_spec(data: dict, file: str, models_dir: str | None = None) -> None:
    """Plan `data` and let it go: every error a merge of it would raise, raised now, nothing read or written."""
    for folder in plan_spec(data, file, models_dir).folders.values():
        folder.close()


def harness_scorer(tasks: Sequence[str], settings: HarnessSettings, store: Store, force: bool = False,
                   say: Callable[[str], None] = lambda _: None) -> Scorer:
    """Scores of one folder on `tasks` through `evals.scoring.run.evaluate`: served from the store when the same
    weights were scored under the same settings, else run by lm-eval and stored."""
    from evals.scoring.run import evaluate

    def score(path: str) -> Scores:
        (scores,) = evaluate([path], list(tasks), settings, store, force, say).values()
        return scores

    return score


def check_select(select: str | None, tasks: Sequence[str]) -> None:
    """The held-out task must be one of the tasks scored; checked before anything is merged."""
    if select is not None and select not in tasks:
        raise InputError(f"--select {select!r} is not among the tasks scored ({', '.join(tasks)}); "
                         "name one of them, or leave --select out to rank by the mean")


def held_out(scores: Scores, select: str | None) -> float:
    """The number a search ranks by, higher is better: the `select` task's score turned so that higher
    is better (over-refusal as 1 - rate, a perplexity negated), or the leaderboard's mean without it."""
    if select is None:
        mean = mean_score(scores)
        if mean is None:
            raise InputError(f"the tasks scored ({', '.join(scores)}) are all perplexities, which have no "
                             "mean; name one with --select")
        return mean
    if select not in scores:
        raise InputError(f"no score for --select {select!r}; the tasks scored are {', '.join(scores)}")
    return oriented(scores[select]).value


def folder_name(*parts: object) -> str:
    """A folder name made of `parts`, joined by '-', with anything but letters, digits, '.', '=', '+'
    and '_' replaced by '_'."""
    return "-".join(re.sub(r"[^A-Za-z0-9._=+]", "_", str(p)) for p in parts)


def label(path: str) -> str:
    """A checkpoint's short name: its folder's base name."""
    return os.path.basename(os.path.normpath(path))
