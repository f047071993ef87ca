"""What a continual-learning strategy is: how each stage of a sequence is trained so that the earlier
stages are kept. Each strategy is one file of trainers/continual/ ending in `STRATEGY = Strategy(...)`,
and one line of the registry (trainers/continual/__init__.py).

A strategy gives:
- `config`: its spec fields (`strategy: {name: ewc, lam: ...}`), a pydantic model with extra="forbid";
- `chained`: whether stage k starts from stage k-1's final model (sequential fine-tuning, EWC, replay)
  or every stage from the base (adapters: one per stage on the frozen base);
- `check(plan, config)`: refuse, before anything is read or trained, a sequence it cannot run
  (a SpecError located in the sequence file);
- `prepare(run, stage)`: the stage's ordinary run (trainers/spec.py `Run`) as this strategy trains
  it: another objective `loss` (EWC's penalty), another data source (replay's buffer). It may write
  files into the stage's folder (a Fisher, a buffer) and reads the earlier stages' results from `stage`;
- `model_after(stage)`: the folder that stands for the model after the stage (its final folder, or
  for adapters a routing folder naming each task's adapter);
- `finish(plan, config, finals)`: after the last stage, extra folders to score ({"merged": folder}).

The sequence runner (trainers/continual/sequence.py) does the rest: stage folders, resume, the
sequence manifest, calling back as each stage's model is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from trainers.spec import Run


class Config(BaseModel):
    """Base of every strategy's spec fields: typed, no unknown keys."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StagePlan:
    """One stage of a sequence, resolved: its name, its lm-eval tasks, its folder and its run."""

    index: int
    name: str
    tasks: tuple[str, ...]
    folder: str  # OUT/stage-K-NAME: the run's checkpoints, final/, log.jsonl, and the strategy's files
    run: Run  # the stage's plain run (base: the previous stage's final, or the base)

    @property
    def final(self) -> str:
        return os.path.join(self.folder, "final")


@dataclass(frozen=True)
class Plan:
    """A validated sequence: its stages, the strategy and its config, the base."""

    file: str
    text: str | None
    base: str
    stages: tuple[StagePlan, ...]
    strategy: Strategy
    config: BaseModel
    out: str
    identity: dict = field(repr=False)  # what a continued sequence must share with the one that started


@dataclass(frozen=True)
class Stage:
    """What `prepare` and `model_after` see: this stage, and the earlier stages with their final folders."""

    plan: Plan
    current: StagePlan
    finals: tuple[str, ...]  # the final folder of each earlier stage, in order

    @property
    def earlier(self) -> tuple[StagePlan, ...]:
        return self.plan.stages[:self.current.index]


Check = Callable[[Plan, BaseModel], None]
Prepare = Callable[[Run, Stage, BaseModel], Run]
ModelAfter = Callable[[Stage, str], str]  # (stage, its final folder) -> the folder standing for the model
Finish = Callable[[Plan, BaseModel, tuple[str, ...]], dict[str, str]]


def nothing(plan: Plan, config: BaseModel) -> None:
    return None


def unchanged(run: Run, stage: Stage, config: BaseModel) -> Run:
    return run


def its_final(stage: Stage, final: str) -> str:
    return final


def no_extras(plan: Plan, config: BaseModel, finals: tuple[str, ...]) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Strategy:
    name: str  # the spec's `strategy.name`
    title: str
    config: type[Config]
    chained: bool
    check: Check = nothing
    prepare: Prepare = unchanged
    model_after: ModelAfter = its_final
    finish: Finish = no_extras

    def __post_init__(self) -> None:
        if not issubclass(self.config, Config):
            raise ValueError(f"strategy {self.name!r}: its config must subclass trainers.continual.strategy.Config")
