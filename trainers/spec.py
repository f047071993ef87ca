"""The run spec: one YAML file per training run. YAML in, a validated `Run` out (through
`surgery.spec_file`); every error is located as `run.yaml: field.path (line N): problem`.

    base: models/base                 # a Hugging Face model folder
    objective: {name: sft}            # name + the objective's own fields
    method: {name: freeze, layers: 1} # name + the method's Config
    data:
      train: [{path: data/a.jsonl}, {path: data/b, weight: 2}]   # files or folders of .jsonl
      eval: data/eval.jsonl
      sampling: temperature           # or proportional (to dataset size)
      temperature: 2
    chat_template: chatml             # a registry name, `tokenizer` (its own) or `none`
    optim: {lr: 1e-4, weight_decay: 0.0, betas: [0.9, 0.999]}
    schedule: {warmup_steps: 10, cosine: true, total_steps: 200}
    batch: {size: 16, grad_accum: 2, max_length: 512, on_overflow: truncate, packing: false}
    eval_every: 50
    save_every: 100
    seed: 0
    out: out/my-run

Relative paths are read from the current folder, as in merge specs. `--set optim.lr=3e-4` overrides
a field before validation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from surgery import spec_file
from surgery.spec_file import first_error, located
from trainers import methods, objectives, templates
from trainers.logprobs import AUTO, LOGITS_ENTRIES
from trainers.methods.method import TrainingMethod
from trainers.objectives.objective import Objective


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Named(BaseModel):
    """`{name: ..., <the component's own fields>}`; the fields are checked against the component's Config."""

    model_config = ConfigDict(extra="allow")
    name: str


class DataSource(Strict):
    path: str
    weight: float | None = Field(None, gt=0, description="relative sampling weight (default: from the size)")


class Data(Strict):
    train: list[DataSource] = Field(min_length=1, description="JSONL files or folders; several make a mixture")
    eval: list[str] = Field(default_factory=list, description="JSONL files or folders scored every eval_every steps")
    sampling: Literal["proportional", "temperature"] = "proportional"
    temperature: float = Field(1.0, gt=0, description="with sampling: temperature, p ∝ size^(1/T)")
    per_step: Literal["drawn", "exact"] = Field("drawn", description="each row's dataset drawn at random, or each "
                                                "step holding every dataset's share of its rows exactly")

    @field_validator("train", mode="before")
    @classmethod
    def _train_list(cls, v: Any) -> Any:
        v = [v] if isinstance(v, (str, dict)) else v
        return [{"path": s} if isinstance(s, str) else s for s in v] if isinstance(v, list) else v

    @field_validator("eval", mode="before")
    @classmethod
    def _eval_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else ([] if v is None else v)


class Optim(Strict):
    lr: float = Field(gt=0, le=1, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.0, ge=0, le=1, description="decoupled weight decay (not applied to biases and norms)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's moment decays, each in [0, 1)")
    eps: float = Field(1e-8, gt=0)
    max_grad_norm: float | None = Field(1.0, gt=0,
                                        description="clip the gradient's global norm to this (null: no clipping)")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"each beta must be in [0, 1) (got {list(v)})")
        return v


class Schedule(Strict):
    total_steps: int = Field(ge=1, description="optimizer steps of the whole run")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up from 0 to optim.lr")
    cosine: bool = Field(True, description="cosine decay after warm-up (else constant)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="the cosine ends at this fraction of optim.lr")


class Batch(Strict):
    size: int = Field(8, ge=1, description="rows per optimizer step, all processes and accumulation together")
    grad_accum: int = Field(1, ge=1, description="micro-batches per process and step")
    max_length: int = Field(1024, ge=2, description="longest sequence in tokens")
    on_overflow: Literal["truncate", "error"] = Field("truncate",
                                                      description="a longer row is cut (and counted) or refused")
    packing: Literal[False, True, "padding_free"] = Field(
        False, description="true: a micro-batch's rows laid end to end in sequences of max_length tokens (whole "
        "rows, position ids restarting per row, attention within each row); padding_free: all in one sequence; "
        "false: one padded row each. The loss is the same")
    logits_chunk: int | Literal["auto"] | None = Field(
        AUTO, description=f"positions whose logits the loss forms at once (recomputed in the backward pass), "
        f"only positions it scores; auto: {LOGITS_ENTRIES} // vocabulary size; null: the model's own head over "
        "every position")

    @field_validator("logits_chunk")
    @classmethod
    def _positive_chunk(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and v < 1:
            raise ValueError("a chunk is at least 1 position; or write auto, or null for no chunking")
        return v


class RunSpec(Strict):
    base: str = Field(description="the model folder training starts from")
    objective: Named
    method: Named = Field(default_factory=lambda: Named(name="full"))
    data: Data
    chat_template: str = Field(templates.TOKENIZER, description="a registry name, 'tokenizer' or 'none'")
    optim: Optim
    schedule: Schedule
    batch: Batch = Field(default_factory=Batch)
    eval_every: int | None = Field(None, ge=1, description="evaluate on data.eval every N steps (and at the end)")
    save_every: int | None = Field(None, ge=1, description="write a resumable checkpoint every N steps")
    seed: int = 0
    out: str = Field(description="the run's folder: checkpoint-N/, final/, log.jsonl")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype the model is loaded in")
    parallel: Literal["ddp", "fsdp"] = Field("ddp",
                                             description="under torchrun: replicate (ddp) or shard (fsdp) the model")
    trust_remote_code: bool = Field(False, description="run code shipped with the base model (only if you trust it)")

    @field_validator("chat_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if v not in templates.CHOICES:
            raise ValueError(f"unknown template '{v}'; choose one of {', '.join(templates.CHOICES)}")
        return v


@dataclass(frozen=True)
class Run:
    """A validated spec with its objective and method resolved."""

    spec: RunSpec
    file: str
    objective: Objective
    objective_config: BaseModel
    method: TrainingMethod
    method_config: BaseModel


def load_run(path: str, overrides: tuple[str, ...] = ()) -> Run:
    spec = spec_file.read(path, "run spec", "with base, objective, data, optim, schedule and out", overrides)
    return parse_run(spec.data, path, spec.text)


def parse_run(data: dict, file: str = "<run>", text: str | None = None) -> Run:
    spec = spec_file.validate(RunSpec, data, file, text)
    objective, objective_config = component(spec.objective, objectives.REGISTRY, "objective", file, text)
    method, method_config = component(spec.method, methods.REGISTRY, "method", file, text)
    if spec.batch.packing and not packs(objective):
        raise located(file, "batch.packing", f"objective '{spec.objective.name}' does not pack its rows (only SFT, "
                      "pretraining and the offline preference objectives do, and RFT and SPIN through them); set "
                      "batch.packing: false", text)
    if spec.data.sampling == "proportional" and spec.data.temperature != 1.0:
        raise located(file, "data.temperature", "a temperature needs sampling: temperature (proportional sampling "
                      "follows the datasets' sizes)", text)
    return Run(spec, file, objective, objective_config, method, method_config)


def packs(objective: Objective) -> bool:
    """Whether rows of the objective can be packed: its own batches, or (RFT, SPIN) the SFT or DPO runs of
    its rounds."""
    if objective.batches is not None:
        return objective.batches.packs
    return objective.loop in ("rejection_sampling", "self_play")


def component(named: Named, registry: dict[str, Objective] | dict[str, TrainingMethod], kind: str, file: str,
              text: str | None):
    """The registry's entry for `named.name` and its validated config; a deprecated field set warns."""
    if named.name not in registry:
        raise located(file, f"{kind}.name", f"unknown {kind} '{named.name}'; choose one of "
                      f"{', '.join(sorted(registry))}", text)
    entry = registry[named.name]
    try:
        config = entry.config.model_validate(named.model_extra or {})
    except ValidationError as e:
        field, problem = first_error(e, named.model_extra)
        if problem.startswith("unknown field"):
            choices = ", ".join(["name", *entry.config.model_fields]) or "name"
            problem += f" of {kind} '{named.name}'; its fields are {choices}"
        raise located(file, f"{kind}.{field}", problem, text) from None
    for name in sorted(set(named.model_extra or {}) & set(entry.config.model_fields)):
        advice = entry.config.model_fields[name].deprecated
        if advice:
            line = spec_file.yaml_line(text, [kind, name]) if text else None
            where = f"{kind}.{name} (line {line})" if line else f"{kind}.{name}"
            warnings.warn(f"{file}: {where}: deprecated; {advice}", FutureWarning, stacklevel=2)
    return entry, config
