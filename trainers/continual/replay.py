"""`replay`: experience replay. A buffer of `size` rows of the earlier stages, a uniform sample of all
of them by reservoir sampling (trainers/continual/reservoir.py, streamed stage after stage with one
seeded generator), is mixed into every step of each later stage: `mix` of each step's rows come from
the buffer and the rest from the stage's own data, exactly (the mixture's `per_step: exact`), as in
Chaudhry et al. 2019 ("On Tiny Episodic Memories in Continual Learning"), where every batch joins
new rows and rows from memory. The buffer a stage trains with is written beside its folder
(`stage-K-NAME-replay.jsonl`; not inside, since a run's out never holds one of its inputs).
"""

from __future__ import annotations

import json
import os

from pydantic import Field

from surgery.io.output import atomic_file
from trainers import data
from trainers.continual.reservoir import Reservoir
from trainers.continual.spec import located_strategy
from trainers.continual.strategy import Config as StrategyConfig
from trainers.continual.strategy import Plan, Stage, Strategy
from trainers.spec import Run, parse_run

BUFFER = "-replay.jsonl"  # after the stage folder's name


class Config(StrategyConfig):
    size: int = Field(ge=1, description="rows the buffer holds (a uniform sample of every earlier stage's rows)")
    mix: float = Field(gt=0, lt=1, description="the share of each step's rows drawn from the buffer")


def stage_rows(run: Run) -> list[data.Row]:
    return [r for i, s in enumerate(run.spec.data.train)
            for r in data.read_dataset(s.path, run.objective.shapes, f"{run.file}: data.train.{i}").rows]


def check(plan: Plan, config: Config) -> None:
    """Whole models chain the stages; the buffer must fill from the first stage's rows, which is all the
    second stage can replay."""
    first = plan.stages[0]
    if not first.run.method.whole_model:
        raise located_strategy(plan, "name", f"replay chains stages through whole models; method "
                               f"'{first.run.spec.method.name}' saves an adapter: use method full or freeze")
    rows = len(stage_rows(first.run))
    if config.size > rows:
        raise located_strategy(plan, "size", f"a buffer of {config.size} rows is larger than the data it samples: "
                               f"stage {first.name!r}, the only one before stage {plan.stages[1].name!r}, has "
                               f"{rows} rows; give a size of at most {rows}")


def buffer(stage: Stage, config: Config) -> list[dict]:
    """The reservoir after streaming every earlier stage's rows, in stage order."""
    reservoir = Reservoir(config.size, seed=f"{stage.plan.stages[0].run.spec.seed}:replay")
    for earlier in stage.earlier:
        reservoir.extend(r.fields for r in stage_rows(earlier.run))
    return reservoir.items


def prepare(run: Run, stage: Stage, config: Config) -> Run:
    """The stage's run with the buffer as one more source, `mix` of every step."""
    if not stage.earlier:
        return run
    os.makedirs(os.path.dirname(os.path.abspath(stage.current.folder)), exist_ok=True)
    path = stage.current.folder.rstrip(os.sep) + BUFFER
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in buffer(stage, config))
    sources = run.spec.data.train
    sizes = [len(data.read_dataset(s.path, run.objective.shapes, f"{run.file}: data.train.{i}").rows)
             for i, s in enumerate(sources)]
    temperature = run.spec.data.temperature if run.spec.data.sampling == "temperature" else 1.0
    own = data.mixture_probabilities(sizes, [s.weight for s in sources], temperature)
    fields = run.spec.model_dump(mode="json")
    fields["data"].update(train=[{"path": s.path, "weight": (1 - config.mix) * p} for s, p in zip(sources, own)]
                          + [{"path": path, "weight": config.mix}], sampling="proportional", temperature=1.0,
                          per_step="exact")
    return parse_run(fields, run.file)


STRATEGY = Strategy("replay", "experience replay", Config, chained=True, check=check, prepare=prepare)
