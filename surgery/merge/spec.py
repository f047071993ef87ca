"""The merge spec: mergekit's YAML format (models or slices, base_model, merge_method, parameters
with gradients and filters, dtype, out_dtype, tokenizer_source) plus our own `seed`.

YAML in, a validated model out (through `surgery.spec_file`); every error is located as
`file: field.path (line N): problem`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

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


class ModelToken(BaseModel):
    """`{kind: model_token, model: M, token: T}` (or `token_id: N`): the row of T (or row N) in model M."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["model_token"]
    model: str
    token: str | None = None
    token_id: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_of(self) -> ModelToken:
        if (self.token is None) == (self.token_id is None):
            raise ValueError("give exactly one of 'token' and 'token_id'")
        return self


class ZeroToken(BaseModel):
    """`{kind: zero}`: a row of zeros."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["zero"]


class TokenSource(BaseModel):
    """Where one token's embedding and head rows come from: a model's own row for that token, another
    token's row, or zeros; `force` gives every model that row, else only those lacking the token."""

    model_config = ConfigDict(extra="forbid")
    source: Annotated[ModelToken | ZeroToken, Field(discriminator="kind")] | str | None = None
    force: bool = False


class TokenizerSettings(BaseModel):
    """mergekit's `tokenizer:` block: the output vocabulary, per-token row sources, padding."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field("union", description="'union', 'base' or a merged model's path")
    tokens: dict[str, TokenSource] | None = Field(None, description="per-token embedding sources; tokens the "
                                                  "output vocabulary lacks are added to it")
    pad_to_multiple_of: int | None = Field(None, gt=0, description="round the embedding rows up to a multiple of this")


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
    tokenizer: TokenizerSettings | None = Field(None, description="mergekit's tokenizer block (instead of "
                                                "tokenizer_source): source, per-token sources, padding")
    chat_template: str | None = Field(None, description="a template name (auto, chatml, llama3, mistral, alpaca, "
                                      "exaone, ...) or a Jinja chat template, written with the tokenizer")
    seed: int = Field(0, description="seeds each tensor's random draws (DARE, DELLA) with the tensor's name")

    @model_validator(mode="after")
    def _one_layout(self) -> MergeSpec:
        if bool(self.models) == bool(self.slices):
            raise ValueError("give exactly one of 'models' and 'slices'")
        if self.tokenizer is not None and self.tokenizer_source is not None:
            raise ValueError("give one of 'tokenizer_source' and 'tokenizer' (its 'source' says the same)")
        return self

    @property
    def vocabulary_source(self) -> str | None:
        """The output vocabulary asked for: `tokenizer.source`, else `tokenizer_source` (None: not set)."""
        return self.tokenizer.source if self.tokenizer is not None else self.tokenizer_source

    @property
    def vocabulary_field(self) -> str:
        """The spec field that names the output vocabulary, for messages."""
        return "tokenizer.source" if self.tokenizer is not None else "tokenizer_source"

    def input_models(self) -> list[str]:
        """Every model the spec names, base first, each once."""
        names = [self.base_model] if self.base_model else []
        names += [m.model for m in self.models or []]
        for s in self.slices or []:
            names += ([s.base_model] if s.base_model else []) + [src.model for src in s.sources]
        return list(dict.fromkeys(names))

    def references(self) -> list[tuple[str, str]]:
        """Every model reference with the spec field that holds it, in spec order (repeats kept)."""
        out = [(self.base_model, "base_model")] if self.base_model else []
        out += [(m.model, f"models.{i}.model") for i, m in enumerate(self.models or [])]
        for i, sl in enumerate(self.slices or []):
            out += [(sl.base_model, f"slices.{i}.base_model")] if sl.base_model else []
            out += [(s.model, f"slices.{i}.sources.{j}.model") for j, s in enumerate(sl.sources)]
        return out

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
