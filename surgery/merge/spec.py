"""The merge spec: mergekit's YAML format (models or slices, base_model, merge_method, parameters
with gradients and filters, dtype, out_dtype, tokenizer_source) plus our own `seed`.

YAML in, a validated model out (through `surgery.spec_file`); every error is located as
`file: field.path (line N): problem`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from surgery import spec_file

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


DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")  # the CLI's --dtype choices and the TUI's list too
DTypeName = Literal[DTYPE_NAMES]


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


SHAPE = "with at least merge_method and models (or slices)"


def load_spec(path: str) -> MergeSpec:
    """Read and validate a spec file's structure (method-level checks follow in `plan.py`); every error
    gives the field and its YAML line."""
    spec = spec_file.read(path, "spec", SHAPE)
    return parse_spec(spec.data, path, spec.text)


def read_spec_data(path: str) -> dict:
    """A spec file's YAML, not yet validated; a missing file, bad YAML or a non-mapping names the file."""
    return spec_file.read(path, "spec", SHAPE).data


def parse_spec(data: Any, file: str = "<spec>", text: str | None = None) -> MergeSpec:
    """`data` (a spec's mapping; `text` its YAML, for line numbers) validated as a MergeSpec."""
    spec_file.mapping(data, file, f"a spec is a YAML mapping {SHAPE}")
    return spec_file.validate(MergeSpec, data, file, text, refine=_parameter_error)


def _parameter_error(loc: list[str], msg: str, err: dict) -> tuple[list[str], str]:
    """An error inside a parameter's setting is about the setting's form, whatever union branch failed."""
    if "parameters" in loc[:-1]:
        return loc[: loc.index("parameters") + 2], ("a parameter is a value, a list of values (a gradient over "
                                                     "layers), or a list of {filter, value}")
    return loc, msg
