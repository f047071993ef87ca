"""The merge spec: mergekit's YAML format (models or slices, base_model, merge_method, parameters
with gradients and filters, dtype, out_dtype, tokenizer_source) plus our own `seed`.

YAML in, a validated model out; every error is located as `file: field.path: problem`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from surgery.errors import SpecError

Scalar = bool | int | float | str


class Conditional(BaseModel):
    """`{filter: self_attn, value: [0, 0.5, 1]}`: applies where `filter` is a substring of the tensor name."""

    model_config = ConfigDict(extra="forbid")
    value: Scalar | list[Scalar]
    filter: str | None = None


Setting = Scalar | list[Scalar] | Conditional | list[Conditional]
Parameters = dict[str, Setting]


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: Parameters | None = None


class SliceSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    layer_range: tuple[int, int]
    parameters: Parameters | None = None

    @model_validator(mode="after")
    def _range(self) -> SliceSource:
        a, b = self.layer_range
        if not 0 <= a < b:
            raise ValueError(f"layer_range [{a}, {b}] must satisfy 0 <= start < end")
        return self


class Slice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[SliceSource] = Field(min_length=1)
    base_model: str | None = None
    parameters: Parameters | None = None


DTypeName = Literal["float32", "float16", "bfloat16", "float64"]


class MergeSpec(BaseModel):
    """A whole merge. Exactly one of `models` and `slices` is given."""

    model_config = ConfigDict(extra="forbid")
    merge_method: str
    models: list[ModelEntry] | None = None
    slices: list[Slice] | None = None
    base_model: str | None = None
    parameters: Parameters | None = None
    dtype: DTypeName | None = Field(None, description="dtype of the inputs in mergekit; here the default output dtype")
    out_dtype: DTypeName | None = Field(None, description="dtype of the written tensors")
    tokenizer_source: str | None = Field(None, description="the output vocabulary: 'base', 'union' (every model's "
                                         "tokens) or a merged model's path; embedding rows are matched by token")
    chat_template: str | None = Field(None, description="a Jinja chat template to write with the tokenizer")
    seed: int = Field(0, description="seeds each tensor's random draws (DARE, DELLA) with the tensor's name")

    @model_validator(mode="after")
    def _one_layout(self) -> MergeSpec:
        if bool(self.models) == bool(self.slices):
            raise ValueError("give exactly one of 'models' and 'slices'")
        return self

    def input_models(self) -> list[str]:
        """Every model the spec names, base first, each once."""
        names = [self.base_model] if self.base_model else []
        names += [m.model for m in self.models or []]
        for s in self.slices or []:
            names += ([s.base_model] if s.base_model else []) + [src.model for src in s.sources]
        return list(dict.fromkeys(names))

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude_none=True), sort_keys=True, separators=(",", ":"))


def load_spec(path: str) -> MergeSpec:
    """Read and validate a spec file's structure (method-level checks follow in `check.py`)."""
    return parse_spec(read_spec_data(path), path)


def read_spec_data(path: str) -> dict:
    """A spec file's YAML, not yet validated; a missing file, bad YAML or a non-mapping names the file."""
    if not os.path.isfile(path):
        raise SpecError(path, "", "no such spec file")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise SpecError(path, where, f"not valid YAML ({getattr(e, 'problem', e)})") from None
    return _mapping(data, path)


def _mapping(data: Any, file: str) -> dict:
    if not isinstance(data, dict):
        raise SpecError(file, "", "a spec is a YAML mapping with at least merge_method and models (or slices)")
    return data


def parse_spec(data: Any, file: str = "<spec>") -> MergeSpec:
    _mapping(data, file)
    try:
        return MergeSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(file, *_first_error(e)) from None


def _first_error(e: ValidationError) -> tuple[str, str]:
    """Pydantic reports one error per Union branch; keep the most specific location."""
    errors = sorted(e.errors(), key=lambda err: -len(err["loc"]))
    err = errors[0]
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    msg = err["msg"].removeprefix("Value error, ")
    if "parameters" in loc[:-1] and err["type"] != "extra_forbidden":
        at = loc.index("parameters")
        loc = loc[: at + 2]
        msg = "a parameter is a value, a list of values (a gradient over layers), or a list of {filter, value}"
    if err["type"] == "extra_forbidden":
        msg = f"unknown field '{loc[-1]}'"
        loc = loc[:-1] + [loc[-1]]
    return ".".join(loc), msg


def _is_union_tag(part: object) -> bool:
    # pydantic adds branch names such as "list[Conditional]" or "bool" to union locations
    return isinstance(part, str) and (part in ("bool", "int", "float", "str", "Conditional") or "[" in part)
