"""`surgery continual SEQ.yaml`: the sequence of trainers/continual/ with every stage's model scored
as it is written, so the stage x task matrix is in the results store when the sequence ends and
`surgery forgetting OUT` reads it directly.

Scored on every stage's tasks (their union, in stage order): the base (the model before any stage,
FWT's baseline), then the model after each stage, then the strategy's extras (the merged adapters).
The model after an `adapters` stage is a routing folder (trainers/continual/adapters.py): each task
is scored on the folder its routing names (its stage's adapter, or the base), and those scores are
stored under the routing folder's name, keyed by a hash of the (task, weights hash) pairs it routes,
with the routing as lineage: a row of the matrix made of real evaluations, each of the model that
answers that task.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from evals.analysis.continual import ForgettingReport, forgetting_report
from evals.scoring import harness
from evals.scoring.checkpoints import Checkpoint, open_checkpoint
from evals.scoring.run import evaluate, put_results
from evals.scoring.scores import ScoreTable, TaskScore
from evals.scoring.store import Store
from surgery.errors import InputError
from trainers.continual.adapters import ROUTING
from trainers.continual.sequence import Done, read_manifest, run_sequence
from trainers.continual.strategy import Plan

Say = Callable[[str], None]


@dataclass(frozen=True)
class Scored:
    """A sequence trained and scored: the checkpoints in order (the base first), the stage tasks, every
    checkpoint's scores (the extras' too), the forgetting report."""

    done: Done
    checkpoints: tuple[str, ...]
    tasks: tuple[str, ...]
    table: ScoreTable
    report: ForgettingReport


def sequence_tasks(plan: Plan) -> list[str]:
    return list(dict.fromkeys(t for s in plan.stages for t in s.tasks))


def stage_tasks(stages: Sequence[Sequence[str]]) -> list[str] | None:
    """The task each stage trained, when every stage has exactly one (GEM's and RWalk's summaries need it)."""
    return [s[0] for s in stages] if all(len(s) == 1 for s in stages) else None


def run_continual(plan: Plan, settings: harness.HarnessSettings, store: Store, say: Say = lambda _: None,
                  quiet: bool = False) -> Scored:
    """Train the sequence, scoring the base first and each stage's model as it is written."""
    tasks = sequence_tasks(plan)
    table = {}

    def score(path: str) -> None:
        table[os.path.abspath(path)] = score_model(path, tasks, settings, store, say)

    score(plan.base)
    done = run_sequence(plan, lambda k, name, model: score(model), quiet=quiet)
    for folder in done.extras.values():
        score(folder)
    checkpoints = (plan.base, *done.models)
    report = forgetting_report(table, list(checkpoints), stage_tasks([s.tasks for s in plan.stages]))
    return Scored(done, checkpoints, tuple(tasks), table, report)


def score_model(path: str, tasks: Sequence[str], settings: harness.HarnessSettings, store: Store,
                say: Say) -> dict[str, TaskScore]:
    """A model folder's scores, or a routing folder's (each task on the folder it routes to)."""
    if os.path.isfile(os.path.join(path, ROUTING)):
        return score_routed(path, tasks, settings, store, say)
    (scores,) = evaluate([path], list(tasks), settings, store, say=say).values()
    return scores


def score_routed(folder: str, tasks: Sequence[str], settings: harness.HarnessSettings, store: Store,
                 say: Say) -> dict[str, TaskScore]:
    """Each task scored on the folder the routing names; all of them stored under the routing folder."""
    routing = read_routing(folder)
    missing = [t for t in tasks if t not in routing]
    if missing:
        raise InputError(f"{os.path.join(folder, ROUTING)} routes no model to {', '.join(missing)}")
    scores, hashes, provenance = {}, {}, {}
    for target in dict.fromkeys(routing[t] for t in tasks):
        mine = [t for t in tasks if routing[t] == target]
        checkpoint = open_checkpoint(target)
        (found,) = evaluate([target], mine, settings, store, say=say).values()
        scores |= {t: found[t] for t in mine}
        hashes |= {t: checkpoint.hash for t in mine}
        provenance |= store.provenance(checkpoint.hash, mine, None)
    name = os.path.abspath(folder)
    hash = routed_hash(hashes)
    store.register(name, Checkpoint(name, hash), {"routed": {t: routing[t] for t in tasks}})
    results = {t: harness.Evaluated(s, provenance[t]["version"], provenance[t]["num_fewshot"])
               for t, s in scores.items()}
    put_results(store, name, hash, results, settings)
    return scores


def read_routing(folder: str) -> dict[str, str]:
    with open(os.path.join(folder, ROUTING)) as f:
        return json.load(f)["tasks"]


def routed_hash(hashes: dict[str, str]) -> str:
    """The identity of a routing: which weights answer which task."""
    return hashlib.sha256(("routed|" + json.dumps(hashes, sort_keys=True)).encode()).hexdigest()


def expand(checkpoints: Sequence[str], stage_tasks_given: Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    """`surgery forgetting OUT` for a sequence folder: its base and the model after each stage, and (unless
    given) the stage tasks when each stage has one; other arguments are returned as they are."""
    if len(checkpoints) != 1:
        return list(checkpoints), list(stage_tasks_given) if stage_tasks_given else None
    found = read_manifest(checkpoints[0])
    if found is None:
        return list(checkpoints), list(stage_tasks_given) if stage_tasks_given else None
    models = [s["model"] for s in found["stages"]]
    if None in models:
        done = sum(m is not None for m in models)
        raise InputError(f"{checkpoints[0]}: the sequence has finished {done} of its {len(models)} stages; "
                         "continue it (surgery continual with its spec) before reading its forgetting")
    given = list(stage_tasks_given) if stage_tasks_given else None
    return [found["base"], *models], given or stage_tasks([s["tasks"] for s in found["stages"]])


def check_scoring_tasks(plan: Plan) -> None:
    """Every stage's task known to lm-eval (the local suites' without building lm-eval's index), before
    anything trains; an unknown one is located in the sequence file."""
    from evals.scoring.suites import METRICS, check_tasks
    from trainers.continual.spec import located_stage

    tasks = sequence_tasks(plan)
    known = list(METRICS) if all(t in METRICS for t in tasks) else harness.known_tasks(harness.task_manager())
    for stage in plan.stages:
        for j, task in enumerate(stage.tasks):
            try:
                check_tasks([task], known)
            except InputError as e:
                raise located_stage(plan, stage.index, f"tasks.{j}", str(e)) from None
