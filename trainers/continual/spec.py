"""The sequence spec of `surgery continual SEQ.yaml`: stages, each a dataset and the lm-eval tasks its
checkpoint is scored on, a strategy, and the usual run fields (trainers/spec.py), which every stage
shares. YAML in, a validated `Plan` out; errors located as `seq.yaml: stages.1.tasks (line 12): ...`.

    base: DIR/models/base
    stages:
      - {name: add, train: DIR/models/data/add/train.jsonl, eval: DIR/models/data/add/test.jsonl, tasks: [world_add]}
      - {name: reverse, train: [{path: ..., weight: 1}], tasks: [world_reverse], steps: 200}
    strategy: {name: ewc, lam: 1000}          # naive, ewc, replay or adapters, with its own fields
    objective: {name: sft}
    method: {name: full}                      # adapters: a PEFT method such as {name: lora, r: 8}
    chat_template: none
    optim: {lr: 5.0e-4}
    schedule: {total_steps: 150, warmup_steps: 4}   # of each stage (a stage's `steps` overrides it)
    batch: {size: 32, max_length: 96}
    save_every: 50
    seed: 0
    out: out/continual-ewc                    # OUT/stage-K-NAME/ per stage, OUT/sequence.json

Every stage's run is built and validated here, before anything trains (its base is the previous
stage's final folder when the strategy chains stages, else the base).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from surgery import spec_file
from surgery.errors import SpecError
from trainers import templates
from trainers.checkpoint import VOLATILE
from trainers.continual.strategy import Plan, StagePlan
from trainers.spec import Batch, DataSource, Named, Optim, Schedule, Strict, parse_run

NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class StageSpec(Strict):
    name: str = Field(description="the stage's name (its folder is OUT/stage-K-NAME)")
    train: list[DataSource] = Field(min_length=1, description="JSONL files or folders the stage trains on")
    eval: list[str] = Field(default_factory=list, description="JSONL scored as a loss every eval_every steps")
    tasks: list[str] = Field(default_factory=list, validate_default=True,  # left out: the same message
                             description="lm-eval tasks every stage's checkpoint is scored on; this stage's "
                             "forgetting is read from them")
    steps: int | None = Field(None, ge=1, description="this stage's optimizer steps (default schedule.total_steps)")

    @field_validator("train", mode="before")
    @classmethod
    def _train(cls, v: Any) -> Any:
        v = [v] if isinstance(v, (str, dict)) else v
        return [{"path": s} if isinstance(s, str) else s for s in v] if isinstance(v, list) else v

    @field_validator("eval", mode="before")
    @classmethod
    def _eval(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else ([] if v is None else v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(f"{v!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a stage needs the lm-eval tasks its checkpoint is scored on (e.g. [world_add]); "
                             "without them neither forgetting nor the stage's own score can be measured")
        return v


class SequenceSpec(Strict):
    base: str = Field(description="the model folder the sequence starts from")
    stages: list[StageSpec] = Field(min_length=2, description="trained in order; at least two")
    strategy: Named = Field(description="naive, ewc, replay or adapters, with its fields")
    objective: Named = Field(default_factory=lambda: Named(name="sft"))
    method: Named = Field(default_factory=lambda: Named(name="full"))
    chat_template: str = Field(templates.TOKENIZER, description="a registry name, 'tokenizer' or 'none'")
    optim: Optim
    schedule: Schedule
    batch: Batch = Field(default_factory=Batch)
    eval_every: int | None = Field(None, ge=1)
    save_every: int | None = Field(None, ge=1, description="a resumable checkpoint every N steps of a stage")
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    out: str = Field(description="the sequence's folder")

    @model_validator(mode="after")
    def _distinct(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat ({', '.join(names)}); give each stage its own name")
        return self


def load_plan(path: str, overrides: tuple[str, ...] = ()) -> Plan:
    file = spec_file.read(path, "sequence spec", "with base, stages, strategy, optim, schedule and out", overrides)
    return parse_plan(file.data, path, file.text)


def parse_plan(data: dict, file: str = "<sequence>", text: str | None = None) -> Plan:
    """The validated sequence: the strategy and its config, and every stage's run."""
    from trainers.continual import STRATEGIES

    spec = spec_file.validate(SequenceSpec, data, file, text)
    strategy, config = strategy_of(spec, STRATEGIES, file, text)
    check_inputs(spec, file, text)
    out, base = os.path.abspath(spec.out), os.path.abspath(spec.base)
    stages, start = [], base
    for k, stage in enumerate(spec.stages):
        folder = os.path.join(out, f"stage-{k + 1}-{stage.name}")
        stages.append(StagePlan(k, stage.name, tuple(stage.tasks), folder,
                                stage_run(spec, stage, start, folder, file, text)))
        start = os.path.join(folder, "final") if strategy.chained else base
    plan = Plan(file, text, base, tuple(stages), strategy, config, out, identity(spec))
    strategy.check(plan, config)
    return plan


def strategy_of(spec: SequenceSpec, registry: dict, file: str, text: str | None):
    named = spec.strategy
    if named.name not in registry:
        raise spec_file.located(file, "strategy.name", f"unknown strategy '{named.name}'; choose one of "
                                f"{', '.join(sorted(registry))}", text)
    strategy = registry[named.name]
    try:
        return strategy, strategy.config.model_validate(named.model_extra or {})
    except ValidationError as e:
        field, problem = spec_file.first_error(e, named.model_extra)
        if problem.startswith("unknown field"):
            fields = ", ".join(["name", *strategy.config.model_fields])
            problem += f" of strategy '{named.name}'; its fields are {fields}"
        raise spec_file.located(file, f"strategy.{field}", problem, text) from None


def check_inputs(spec: SequenceSpec, file: str, text: str | None) -> None:
    """The base and every stage's files exist (the rows themselves are checked when a stage reads them)."""
    if not os.path.isdir(spec.base):
        raise spec_file.located(file, "base", f"no such model folder {spec.base!r}", text)
    for k, stage in enumerate(spec.stages):
        for i, source in enumerate(stage.train):
            if not os.path.exists(source.path):
                raise spec_file.located(file, f"stages.{k}.train.{i}.path", f"no such file or folder {source.path!r}",
                                        text)
        for i, path in enumerate(stage.eval):
            if not os.path.exists(path):
                raise spec_file.located(file, f"stages.{k}.eval.{i}", f"no such file or folder {path!r}", text)


SHARED = ("objective", "method", "chat_template", "optim", "schedule", "batch", "eval_every", "save_every", "seed",
          "dtype", "trust_remote_code")


def stage_run(spec: SequenceSpec, stage: StageSpec, base: str, folder: str, file: str, text: str | None):
    """The stage's run spec: the shared fields, its base, data, steps and folder; validated as any run."""
    shared = spec.model_dump(mode="json", include=set(SHARED))  # objective and method keep their own fields
    shared["schedule"]["total_steps"] = stage.steps or spec.schedule.total_steps
    train = [{**s.model_dump(mode="json", exclude_none=True), "path": os.path.abspath(s.path)} for s in stage.train]
    fields = {**shared, "base": base, "out": folder,
              "data": {"train": train, "eval": [os.path.abspath(p) for p in stage.eval]}}
    return parse_run(fields, file, text)  # the shared fields sit at the same paths in the sequence file


def identity(spec: SequenceSpec) -> dict:
    """The fields a continued sequence must share with the one that started in OUT (all but the volatile)."""
    return {k: v for k, v in spec.model_dump(mode="json").items() if k not in VOLATILE}


def digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def located_stage(plan: Plan, k: int, field: str, problem: str) -> SpecError:
    """A SpecError at `stages.K.FIELD` of the sequence file."""
    return spec_file.located(plan.file, f"stages.{k}.{field}", problem, plan.text)


def located_strategy(plan: Plan, field: str, problem: str) -> SpecError:
    return spec_file.located(plan.file, f"strategy.{field}", problem, plan.text)
