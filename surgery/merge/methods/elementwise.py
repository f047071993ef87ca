"""Element-wise methods as typed functions. A method whose output at each entry depends only on the
inputs at that entry (no tensor-wide statistics) is one function, and its signature says the rest:

    def merge(models: Models, weight: PerModel[Annotated[float, Field(description="...")]],
              normalize: Annotated[bool, Field(description="...")] = True) -> torch.Tensor: ...
    METHOD = elementwise(merge, "linear", "weighted average of the models", "https://...")

- `base: torch.Tensor` among the arguments: the method needs a base_model; without it, none is read.
- `models: Models`: the other inputs' rows, in spec order, float32, never to be modified in place.
- `PerModel[T]`: one value per model, the function gets them as a list; any other parameter is global.
- A parameter without a default is required; `lambda_` is written `lambda` in a spec. Descriptions
  and bounds are pydantic's `Field(...)` in `Annotated`, so the spec checks and the TUI read them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar, get_args, get_origin, get_type_hints

import torch
from pydantic import Field, create_model

from surgery.merge.methods.method import Block, Method, NoParams, Params, Stats

T = TypeVar("T")
Models = list[torch.Tensor]
INPUTS = ("base", "models")


class PerModel(Generic[T]):
    """Marks a parameter that takes one value per model; the function receives a list of them."""


def elementwise(fn: Callable[..., torch.Tensor], name: str, summary: str, reference: str = "",
                compiled: Callable[..., torch.Tensor | None] | None = None, **options: Any) -> Method:
    """The Method of `fn` (see the module's docstring); `options` are Method's own (`work`, `max_models`).
    `compiled`, where given, takes the same arguments with the inputs' rows as stored (bf16 stays bf16)
    and returns fn's bits, or None where it cannot: then fn runs."""
    hints = get_type_hints(fn, include_extras=True)
    arguments = [a for a in inspect.signature(fn).parameters.values() if a.name not in INPUTS]
    shared = {a.name: _field(a, hints[a.name]) for a in arguments if get_origin(hints[a.name]) is not PerModel}
    per_model = {a.name: _field(a, get_args(hints[a.name])[0]) for a in arguments
                 if get_origin(hints[a.name]) is PerModel}
    required = tuple(a.name for a in arguments if a.default is inspect.Parameter.empty)
    uses_base = "base" in inspect.signature(fn).parameters

    def merge(block: Block, stats: Stats) -> torch.Tensor:
        values = {k: getattr(block.shared, k) for k in shared}
        values |= {k: [getattr(p, k) for p in block.per_model] for k in per_model}
        if compiled is not None:
            out = compiled(**({"base": block.stored_base} if uses_base else {}), models=list(block.stored_models),
                           **values)
            if out is not None:
                return out
        return fn(**({"base": block.base} if uses_base else {}), models=list(block.models), **values)

    return Method(name, merge, summary, reference, shared=_model(name, "Shared", shared),
                  per_model=_model(name, "PerModel", per_model), base="required" if uses_base else "unused",
                  required=required, **options)


def _field(argument: inspect.Parameter, annotation: Any) -> tuple[Any, Any]:
    """(annotation, default) for pydantic: a required parameter is optional in the model (the plan says
    which model lacks it); `lambda_` takes its alias."""
    required = argument.default is inspect.Parameter.empty
    if required:
        annotation = _optional(annotation)
    alias = argument.name.removesuffix("_") if argument.name.endswith("_") else None
    return Annotated[annotation, Field(alias=alias)], None if required else argument.default


def _optional(annotation: Any) -> Any:
    """T | None, keeping the Field of `Annotated[T, Field(...)]`."""
    if get_origin(annotation) is Annotated:
        inner, *extras = get_args(annotation)
        return Annotated[(inner | None, *extras)]
    return annotation | None


def _model(method: str, part: str, fields: dict) -> type[Params]:
    if not fields:
        return NoParams
    title = "".join(w.capitalize() for w in method.split("_")) + part
    return create_model(title, __base__=Params, **fields)
