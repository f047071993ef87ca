"""`adapters`: task isolation, one adapter per stage (LoRA or another PEFT method) on the frozen base
(as in progressive and adapter-based continual learning, e.g. Rusu et al. 2016; Houlsby et al. 2019).
No stage changes another stage's adapter, so when each task is answered by its own stage's adapter
(the task is known when asked, the task-incremental setting) nothing learnt is forgotten: backward
transfer is 0 by construction, and so is forward transfer (a task not yet learnt is answered by the base).

The model after stage k is therefore a routing, written as `OUT/stage-K-NAME/routed/routing.json`:
each task of stages 1..k to its stage's adapter, every later task to the base. Afterwards the adapters
may be merged into one (`merge`, as `surgery merge-adapters` merges them: `cat` is exact, the
`*_svd` combinations re-factorise), which needs no routing but may lose some of each task.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from surgery.adapters.combine import COMBINATIONS
from surgery.io.output import atomic_folder, write_json
from trainers.continual.spec import Strict, located_strategy
from trainers.continual.strategy import Config as StrategyConfig
from trainers.continual.strategy import Plan, Stage, Strategy

ROUTING = "routing.json"
MERGED = "merged"


class Merge(Strict):
    combination: Literal[COMBINATIONS] = Field("cat", description="how the LoRA adapters combine (surgery "
                                               "merge-adapters): cat (exact sum of the deltas) or a *_svd one")
    weights: list[float] | None = Field(None, min_length=1, description="one weight per stage (default 1 each)")
    rank: int | None = Field(None, ge=1, description="*_svd: the merged rank (default the largest input rank)")
    density: float | None = Field(None, gt=0, le=1, description="ties_svd, dare_*: the share of each delta kept")


class Config(StrategyConfig):
    merge: Merge | None = Field(None, description="after the last stage, merge the adapters into OUT/merged")


def check(plan: Plan, config: Config) -> None:
    run = plan.stages[0].run
    if run.method.whole_model:
        raise located_strategy(plan, "name", f"adapters trains one adapter per stage on the frozen base; method "
                               f"'{run.spec.method.name}' trains the whole model: give a PEFT method such as "
                               "{name: lora, r: 8}")
    if config.merge is not None and config.merge.weights is not None and len(config.merge.weights) != len(plan.stages):
        raise located_strategy(plan, "merge.weights", f"{len(config.merge.weights)} weights for "
                               f"{len(plan.stages)} stages; give one per stage, in order")


def routing(plan: Plan, upto: int, finals: tuple[str, ...]) -> dict[str, str]:
    """{task: the folder answering it} after stage `upto` (0-based): its stage's adapter, or the base."""
    return {task: finals[s.index] if s.index <= upto else plan.base for s in plan.stages for task in s.tasks}


def model_after(stage: Stage, final: str) -> str:
    """The routing folder of the model after this stage."""
    k = stage.current.index
    folder = os.path.join(stage.current.folder, "routed")
    with atomic_folder(folder) as tmp:
        write_json(os.path.join(tmp, ROUTING), {"stage": stage.current.name,
                                                "tasks": routing(stage.plan, k, (*stage.finals, final))})
    return folder


def finish(plan: Plan, config: Config, finals: tuple[str, ...]) -> dict[str, str]:
    """The merged adapter (merged again when the sequence is run again: it is cheap)."""
    if config.merge is None:
        return {}
    from surgery.adapters.lora_merge import AdapterMergeSettings
    from surgery.adapters.merge_adapters import merge_adapters

    m = config.merge
    settings = AdapterMergeSettings(m.combination, m.rank, m.density, plan.stages[0].run.spec.seed)
    path, _ = merge_adapters(list(finals), os.path.join(plan.out, MERGED), settings, m.weights or (), force=True)
    return {MERGED: path}


STRATEGY = Strategy("adapters", "adapter isolation", Config, chained=False, check=check, model_after=model_after,
                    finish=finish)
