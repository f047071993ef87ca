"""The Constitutional AI spec (`surgery cai SPEC.yaml`), its constitution and its red-team prompts.

    model: .surgery/models/smollm2-135m-instruct    # the policy whose answers are critiqued and revised
    stage: sl                        # sl: critiques and revisions -> SFT rows; rl: AI preference labels
    constitution: my.yaml            # default: the shipped constitution.yaml (10 principles)
    prompts: red_team.jsonl          # default: the shipped red_team.jsonl; rows {"prompt": ...}
    out: out/cai-sl                  # sl: sft.jsonl, trace.jsonl; rl: preferences.jsonl; both card.json, card.md
    chat_template: tokenizer         # how conversations are put to the policy (none: a Human/Assistant transcript)
    rounds: 2                        # sl: critique-and-revise rounds per prompt
    feedback: {model: null}          # rl: the feedback model (default: the policy), same tokenizer as the policy;
                                     # also chat_template (none) and verdicts ([" A", " B"])
    sampling: {temperature: 0.7, top_p: 0.95, max_new_tokens: 96, batch_size: 16}
    seed: 0

A constitution file: `name`, and `principles`, each with `id`, `critique` (a critique request) and
`revision` (a revision request); ids are unique. Optional `examples`: worked critique-and-revision
exchanges (`prompt`, `response`, `critique_request`, `critique`, `revision_request`, `revision`), shown
before every critique and revision as earlier turns of the conversation, as Bai et al. 2022 prepend
few-shot examples to their critique and revision prompts (section 3.1).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from surgery import spec_file
from surgery.errors import InputError
from trainers import templates
from trainers.jsonl import read_json_lines

HERE = os.path.dirname(__file__)
SHIPPED_CONSTITUTION = os.path.join(HERE, "constitution.yaml")
SHIPPED_PROMPTS = os.path.join(HERE, "red_team.jsonl")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Principle(Strict):
    id: str = Field(min_length=1, description="a short name, recorded in the data's lineage")
    critique: str = Field(min_length=1, description="the critique request")
    revision: str = Field(min_length=1, description="the revision request")


class Example(Strict):
    """One worked critique-and-revision exchange, shown to the policy before its own."""

    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1, description="the first answer, critiqued")
    critique_request: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision_request: str = Field(min_length=1)
    revision: str = Field(min_length=1, description="the answer rewritten under the revision request")

    def turns(self) -> list[dict]:
        """The exchange as conversation turns: prompt, response, critique request, critique, revision request,
        revision."""
        said = [("user", self.prompt), ("assistant", self.response), ("user", self.critique_request),
                ("assistant", self.critique), ("user", self.revision_request), ("assistant", self.revision)]
        return [{"role": r, "content": c} for r, c in said]


class ConstitutionFile(Strict):
    name: str = Field(min_length=1)
    principles: list[Principle] = Field(min_length=1)
    examples: list[Example] = Field(default_factory=list, description="few-shot exchanges before each critique "
                                    "and revision")

    @field_validator("principles")
    @classmethod
    def _unique(cls, principles: list[Principle]) -> list[Principle]:
        ids = [p.id for p in principles]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"principle ids must be unique; {', '.join(twice)} appear more than once")
        return principles


class Feedback(Strict):
    model: str | None = Field(None, description="rl: the feedback model's folder (default: the policy itself)")
    chat_template: str = Field("none", description="how the feedback question is put to it")
    verdicts: tuple[str, str] = Field((" A", " B"), description="the answers naming the first and the second "
                                      "response; the options are labelled with them")


class Sampling(Strict):
    temperature: float = Field(0.7, ge=0, description="0 is greedy (rl needs > 0 for two different samples)")
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1, description="of each response, critique and revision")
    batch_size: int = Field(16, ge=1, description="prompts generated at once")


class CAISpec(Strict):
    model: str = Field(description="the policy model folder")
    stage: Literal["sl", "rl"] = Field(description="sl: critique and revise into SFT rows; rl: preference labels")
    constitution: str | None = Field(None, description="constitution YAML (default: the shipped one)")
    prompts: str | None = Field(None, description="red-team prompts JSONL (default: the shipped ones)")
    out: str = Field(description="the output folder")
    chat_template: str = Field(templates.TOKENIZER, description="how conversations are put to the policy")
    rounds: int = Field(2, ge=1, description="sl: critique-and-revise rounds")
    feedback: Feedback = Field(default_factory=Feedback)
    sampling: Sampling = Field(default_factory=Sampling)
    seed: int = 0


@dataclass(frozen=True)
class Constitution:
    path: str
    sha256: str
    name: str
    principles: tuple[Principle, ...]
    examples: tuple[Example, ...] = ()

    def shots(self) -> list[dict]:
        """Every example's turns, in order: what precedes each critique and revision conversation."""
        return [turn for e in self.examples for turn in e.turns()]


@dataclass(frozen=True)
class Prompts:
    path: str
    sha256: str
    rows: tuple[str, ...]


def load_spec(path: str, overrides: tuple[str, ...] = ()) -> tuple[CAISpec, Constitution, Prompts]:
    file = spec_file.read(path, "cai spec", "with model, stage and out", overrides)
    spec = spec_file.validate(CAISpec, file.data, path, file.text)
    if spec.stage == "rl" and spec.sampling.temperature == 0:
        raise spec_file.located(path, "sampling.temperature", "the rl stage compares two samples of each prompt, "
                                "which greedy decoding makes equal; set a temperature above 0", file.text)
    constitution = read_constitution(spec.constitution or SHIPPED_CONSTITUTION)
    return spec, constitution, read_prompts(spec.prompts or SHIPPED_PROMPTS, f"{path}: prompts")


def read_constitution(path: str) -> Constitution:
    file = spec_file.read(path, "constitution", "with name and principles (id, critique, revision)")
    found = spec_file.validate(ConstitutionFile, file.data, path, file.text)
    digest = hashlib.sha256(file.text.encode()).hexdigest()
    return Constitution(os.path.abspath(path), digest, found.name, tuple(found.principles), tuple(found.examples))


def read_prompts(path: str, where: str) -> Prompts:
    if not os.path.isfile(path):
        raise InputError(f"{where}: no such file {path!r}")
    found = read_json_lines(path)
    rows = []
    for number, obj in found.objects():
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
            raise InputError(f"{path}: line {number}: a row is a JSON object with a non-empty string 'prompt'")
        rows.append(obj["prompt"].strip())
    if not rows:
        raise InputError(f"{where}: {path} holds no prompt; write one JSON object a line: {{\"prompt\": ...}}")
    return Prompts(os.path.abspath(path), found.sha256, tuple(rows))
