"""The Self-Instruct spec (`surgery self-instruct SPEC.yaml`) and its seed tasks file.

    model: .surgery/models/smollm2-135m-instruct   # the model that writes the data
    seeds: my_seeds.jsonl             # default: the shipped seed_tasks.jsonl (32 tasks)
    out: out/self-instruct            # a folder: train.jsonl, rejected.json, card.json, card.md, lengths.png
    target: 100                       # stop once this many instructions are kept
    max_rounds: 60
    prompts_per_round: 8              # proposal prompts per round, generated as one batch
    demonstrations: {seed: 6, generated: 2}
    sampling: {temperature: 0.7, top_p: 0.95, proposal_tokens: 96, instance_tokens: 96, batch_size: 16}
    filters: {rouge_l: 0.7, min_words: 3, max_words: 150, max_output_words: 200, blocklist: [image, ...]}
    seed: 0

Seed rows: `{"instruction", "output"}`, optional `"input"` (default "") and `"classification"` (default
false: whether the task's answer is one label of a fixed set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from surgery import spec_file
from surgery.errors import InputError
from trainers.jsonl import read_json_lines
from trainers.self_instruct.filters import BLOCKLIST

SHIPPED_SEEDS = os.path.join(os.path.dirname(__file__), "seed_tasks.jsonl")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Demonstrations(Strict):
    seed: int = Field(6, ge=1, description="seed instructions shown in each proposal prompt")
    generated: int = Field(2, ge=0, description="generated instructions shown beside them (seeds while there are "
                           "too few)")


class Sampling(Strict):
    temperature: float = Field(0.7, ge=0, description="0 is greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    proposal_tokens: int = Field(96, ge=1, description="max new tokens of a proposal (a list of instructions)")
    instance_tokens: int = Field(96, ge=1, description="max new tokens of an instance (input and output)")
    batch_size: int = Field(16, ge=1, description="prompts generated at once")


class Filters(Strict):
    rouge_l: float = Field(0.7, gt=0, le=1, description="reject an instruction whose ROUGE-L F1 with a pooled one "
                           "reaches this")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(150, ge=1)
    max_output_words: int = Field(200, ge=1, description="reject an instance whose output is longer")
    blocklist: list[str] = Field(default_factory=lambda: list(BLOCKLIST),
                                 description="words and phrases a text model cannot act on (image, file, go to, ...)")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_words > self.max_words:
            raise ValueError(f"min_words {self.min_words} is above max_words {self.max_words}")
        return self


class SelfInstructSpec(Strict):
    model: str = Field(description="the model folder that proposes instructions and writes their instances")
    seeds: str | None = Field(None, description="seed tasks JSONL (default: the 32 shipped with surgery)")
    out: str = Field(description="the output folder")
    target: int = Field(100, ge=1, description="stop once this many instructions are kept")
    max_rounds: int = Field(60, ge=1, description="stop after this many rounds whatever was kept")
    prompts_per_round: int = Field(8, ge=1, description="proposal prompts per round")
    demonstrations: Demonstrations = Field(default_factory=Demonstrations)
    classification_demos: int = Field(4, ge=0, description="seed tasks shown in the classification question")
    instance_demos: int = Field(2, ge=0, description="seed tasks shown in an instance prompt")
    sampling: Sampling = Field(default_factory=Sampling)
    filters: Filters = Field(default_factory=Filters)
    seed: int = 0


@dataclass(frozen=True)
class Seeds:
    path: str
    sha256: str
    rows: tuple[dict, ...]


def load_spec(path: str, overrides: tuple[str, ...] = ()) -> tuple[SelfInstructSpec, Seeds]:
    """The validated spec and its seed tasks; every problem located in the spec or the seed file."""
    file = spec_file.read(path, "self-instruct spec", "with model, out and the generation's settings", overrides)
    spec = spec_file.validate(SelfInstructSpec, file.data, path, file.text)
    seeds = read_seeds(spec.seeds or SHIPPED_SEEDS, f"{path}: seeds")
    if len(seeds.rows) < spec.demonstrations.seed:
        raise spec_file.located(path, "demonstrations.seed", f"{spec.demonstrations.seed} seed demonstrations a "
                                f"prompt, but {seeds.path} holds {len(seeds.rows)} tasks; lower it or add seeds",
                                file.text)
    return spec, seeds


def read_seeds(path: str, where: str) -> Seeds:
    if not os.path.isfile(path):
        raise InputError(f"{where}: no such file {path!r}")
    found = read_json_lines(path)
    rows = [seed_row(obj, path, number) for number, obj in found.objects()]
    if not rows:
        raise InputError(f"{where}: {path} holds no task; write one JSON object a line with instruction and output "
                         "(and optionally input and classification)")
    return Seeds(path, found.sha256, tuple(rows))


def seed_row(obj: object, path: str, number: int) -> dict:
    where = f"{path}: line {number}"
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a seed task is a JSON object with instruction and output")
    for key in ("instruction", "output"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise InputError(f"{where}: field '{key}' must be a non-empty string")
    if not isinstance(obj.get("input", ""), str) or not isinstance(obj.get("classification", False), bool):
        raise InputError(f"{where}: 'input' must be a string and 'classification' true or false")
    if "\n" in obj["instruction"]:
        raise InputError(f"{where}: the instruction must be one line (a proposal prompt lists one a line)")
    return {"instruction": obj["instruction"].strip(), "input": obj.get("input", "").strip(),
            "output": obj["output"].strip(), "classification": obj.get("classification", False)}
