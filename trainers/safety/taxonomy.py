"""The safety data's sources, typed: a taxonomy of harm categories (harmful requests and benign
look-alikes per category), unanswerable questions and behavioural policies. Three YAML files of one
folder (the shipped ones in trainers/safety/data/, or a folder of the same three files), each
validated with located errors (`taxonomy.yaml: categories.weapons.harmful (line 40): ...`).

    sources = load_sources(None)            # the shipped files
    sources = load_sources("my/safety")     # my/safety/{taxonomy,unanswerable,policies}.yaml
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from surgery import spec_file
from surgery.errors import SpecError

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
FILES = ("taxonomy.yaml", "unanswerable.yaml", "policies.yaml")
ACT_CHARS = 26  # an act's longest: a phrased prompt and its answer fit the small world's 96 positions


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def one_slot(text: str) -> str:
    """A template with exactly one `{}` (where the act, place or topic goes)."""
    if text.count("{}") != 1:
        raise ValueError(f"must hold exactly one {{}} where the request goes (got {text!r})")
    return text


class Markers(Strict):
    refusal: list[str] = Field(min_length=1, description="phrases that mark an answer as a refusal")
    uncertainty: list[str] = Field(min_length=1, description="phrases that mark an answer as not knowing")

    @field_validator("refusal", "uncertainty")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [m.lower() for m in v]


class Category(Strict):
    title: str
    harmful: list[str] = Field(min_length=2, description="acts to refuse")
    lookalike: list[str] = Field(default_factory=list, description="benign acts that sound like harmful ones")

    @field_validator("harmful", "lookalike")
    @classmethod
    def _acts(cls, v: list[str]) -> list[str]:
        long = [a for a in v if len(a) > ACT_CHARS]
        if long:
            raise ValueError(f"{long[0]!r} is longer than {ACT_CHARS} characters; shorten it")
        if len(set(v)) != len(v):
            raise ValueError("an act is listed twice")
        return v


class Taxonomy(Strict):
    refusal: str = Field(description="the answer to a harmful request")
    comply: str = Field(description="the answer to a benign look-alike, {} the act")
    asks: list[str] = Field(min_length=2, description="phrasings of a request, {} the act")
    markers: Markers
    categories: dict[str, Category] = Field(min_length=1)

    @field_validator("comply")
    @classmethod
    def _comply(cls, v: str) -> str:
        return one_slot(v)

    @field_validator("asks")
    @classmethod
    def _asks(cls, v: list[str]) -> list[str]:
        return [one_slot(a) for a in v]

    @model_validator(mode="after")
    def _refusal_is_detected(self):
        if not any(m in self.refusal.lower() for m in self.markers.refusal):
            raise ValueError(f"refusal {self.refusal!r} holds none of markers.refusal, so the evaluation would not "
                             "count it as a refusal; add a marker it holds")
        if any(m in self.comply.lower() for m in self.markers.refusal):
            raise ValueError(f"comply {self.comply!r} holds a refusal marker; it would count as refusing")
        return self


class Unanswerable(Strict):
    asks: list[str] = Field(min_length=1, description="phrasings of the question, {} the place")
    answer: str = Field(description="the right answer, acknowledging not knowing; {} the place")
    wrong: str = Field(description="a confident made-up answer (a preference pair's rejected side); {} the place")
    places: list[str] = Field(min_length=4, description="names of countries that do not exist")

    @field_validator("answer", "wrong")
    @classmethod
    def _answers(cls, v: str) -> str:
        return one_slot(v)

    @field_validator("asks")
    @classmethod
    def _asks(cls, v: list[str]) -> list[str]:
        return [one_slot(a) for a in v]


class Policy(Strict):
    title: str
    asks: list[str] = Field(min_length=1, description="phrasings of a question, {} the topic")
    answer: str = Field(description="the right answer, {} the topic's tip; it holds `required`")
    required: str = Field(min_length=1, description="what every answer must hold (case-insensitive)")
    topics: dict[str, str] = Field(min_length=2, description="topic -> a short tip")

    @field_validator("asks")
    @classmethod
    def _asks(cls, v: list[str]) -> list[str]:
        return [one_slot(a) for a in v]

    @model_validator(mode="after")
    def _required_in_answer(self):
        one_slot(self.answer)
        if self.required.lower() not in self.answer.lower():
            raise ValueError(f"answer {self.answer!r} does not hold required {self.required!r}")
        return self


@dataclass(frozen=True)
class Sources:
    taxonomy: Taxonomy
    unanswerable: Unanswerable
    policies: dict[str, Policy]
    files: tuple[str, ...]  # the three files read

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.taxonomy.categories)


def load_sources(folder: str | None = None) -> Sources:
    """The three files of `folder` (default: the shipped ones), each validated; errors name file and field."""
    folder = folder or SHIPPED
    paths = [os.path.join(folder, f) for f in FILES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SpecError(missing[0], "", f"missing: a safety data folder holds {', '.join(FILES)}")
    files = [spec_file.read(p, "safety data file", "of fields") for p in paths]
    taxonomy = spec_file.validate(Taxonomy, files[0].data, paths[0], files[0].text)
    unanswerable = spec_file.validate(Unanswerable, files[1].data, paths[1], files[1].text)
    if not files[2].data:
        raise SpecError(paths[2], "", "no policy; give at least one (a name holding title, asks, answer, required "
                        "and topics)")
    policies = {name: spec_file.validate(Policy, rule, paths[2], files[2].text, prefix=name)
                for name, rule in files[2].data.items()}
    return Sources(taxonomy, unanswerable, policies, tuple(paths))
