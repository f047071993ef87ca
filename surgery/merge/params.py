"""Parameter settings as mergekit writes them: a value, a gradient (a list interpolated across the
layers of a slice), or conditions `{filter, value}` picked by a substring of the tensor name.
Validated once against the method's typed parameters, with located errors; resolved per tensor.
Names are treated as mergekit treats them: one another method takes is ignored (with a warning), one
no method takes is an error.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import cache
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from surgery.errors import SpecError
from surgery.merge.methods import REGISTRY
from surgery.merge.methods.method import COMPAT, Method, is_compat
from surgery.merge.spec import Conditional, MergeSpec, Setting


def evaluate(setting: Setting, tensor: str, t: float) -> Any:
    """The value of a setting for `tensor` at depth t in [0, 1]; None when no condition matches."""
    if isinstance(setting, Conditional):
        setting = [setting]
    if isinstance(setting, list) and setting and isinstance(setting[0], Conditional):
        for cond in setting:
            if cond.filter in (None, "*") or cond.filter in tensor:
                return evaluate(cond.value, tensor, t)
        return None
    if isinstance(setting, list):
        if not setting:
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            return setting[int(t * (len(setting) - 1))]  # discrete values are picked, not blended
        x = t * (len(setting) - 1)
        i = int(x)
        j = min(i + 1, len(setting) - 1)
        return (1 - (x - i)) * setting[i] + (x - i) * setting[j]
    return setting


def first_value(sources: Iterable[dict | None], key: str, tensor: str, t: float) -> Any:
    """Highest-precedence setting of `key` that yields a value (model, then slice, then global)."""
    for params in sources:
        if params and key in params:
            value = evaluate(params[key], tensor, t)
            if value is not None:
                return value
    return None


def scalars(setting: Setting, path: str) -> Iterable[tuple[str, Any]]:
    """Every literal value inside a setting, with its location."""
    if isinstance(setting, Conditional):
        yield from scalars(setting.value, f"{path}.value")
    elif isinstance(setting, list):
        for i, item in enumerate(setting):
            yield from scalars(item, f"{path}.{i}")
    else:
        yield path, setting


def check_value(field: FieldInfo, value: Any, file: str, path: str) -> None:
    try:
        TypeAdapter(field.annotation).validate_python(value, strict=True)
        ok = all(_within(m, value) for m in field.metadata)
    except (ValidationError, TypeError):
        raise SpecError(file, path, f"must be {_type_text(field)} (got {value!r})") from None
    if not ok:
        raise SpecError(file, path, f"{bounds_text(field)} (got {value!r})")


def _within(m: object, v: Any) -> bool:
    if v is None:
        return True
    return not ((isinstance(m, Gt) and not v > m.gt) or (isinstance(m, Ge) and not v >= m.ge)
                or (isinstance(m, Lt) and not v < m.lt) or (isinstance(m, Le) and not v <= m.le))


def bounds_text(field: FieldInfo) -> str:
    lo, hi, lo_open, hi_open = "-inf", "inf", True, True
    for m in field.metadata:
        if isinstance(m, (Gt, Ge)):
            lo, lo_open = (m.gt, True) if isinstance(m, Gt) else (m.ge, False)
        if isinstance(m, (Lt, Le)):
            hi, hi_open = (m.lt, True) if isinstance(m, Lt) else (m.le, False)
    return f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _type_text(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return {"bool": "true or false", "float | None": "a number", "float": "a number"}.get(text, text)


def build(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    """A method's parameter model from resolved values (already checked at spec time)."""
    return model.model_validate({k: v for k, v in values.items() if v is not None})


# ---- which names a method takes ------------------------------------------------------------------

def check_parameters(spec: MergeSpec, method: Method, file: str) -> list[str]:
    """Every parameter name known to the method, at a level where it applies, every value in bounds.
    Returns the warnings, one per name: a name this method does not use but another does (ignored, as
    mergekit ignores it), and a parameter kept for mergekit compatibility only that the spec sets."""
    warnings: dict[str, str] = {}
    for where, params, model_level in _parameter_levels(spec):
        for key, setting in (params or {}).items():
            fld = _field_for(method, key, f"{where}.{key}", model_level, file)
            if fld is None:
                warnings.setdefault(key, f"{where}.{key}: {method.name} does not use '{key}'; ignored, as mergekit "
                                         "does")
                continue
            for path, value in scalars(setting, f"{where}.{key}"):
                check_value(fld, value, file, path)
            if is_compat(fld):
                warnings.setdefault(key, f"{where}.{key}: {COMPAT}")
    return list(warnings.values())


def _parameter_levels(spec: MergeSpec) -> list[tuple[str, dict | None, bool]]:
    """(spec path, parameters, whether the level is one model's) for every parameters mapping of the spec."""
    out = [(f"models.{i}.parameters", m.parameters, True) for i, m in enumerate(spec.models or [])]
    for i, sl in enumerate(spec.slices or []):
        out += [(f"slices.{i}.sources.{j}.parameters", s.parameters, True) for j, s in enumerate(sl.sources)]
    out.append(("parameters", spec.parameters, False))
    return out + [(f"slices.{i}.parameters", s.parameters, False) for i, s in enumerate(spec.slices or [])]


def _field_for(method: Method, key: str, path: str, model_level: bool, file: str) -> FieldInfo | None:
    """The method's field for parameter `key`; None for a name only other methods use; an error for a
    global parameter set per model and for a name no method knows (with the closest known name)."""
    per, shared = fields_by_alias(method.per_model), fields_by_alias(method.shared)
    if key in shared and model_level:
        raise SpecError(file, path, f"'{key}' is a global parameter of {method.name}; move it to the top-level "
                        "parameters")
    if key in per or key in shared:
        return per.get(key) or shared[key]
    if key in every_parameter():
        return None
    known = sorted(k for k, f in {**per, **shared}.items() if not is_compat(f))  # those worth suggesting
    near = difflib.get_close_matches(key, known, n=1) or difflib.get_close_matches(key, every_parameter(), n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise SpecError(file, path, f"unknown parameter for {method.name} (known: {', '.join(known) or 'none'}){hint}")


@cache
def every_parameter() -> tuple[str, ...]:
    """Every parameter name some method of the registry takes."""
    names = {k for m in REGISTRY.values() for k in [*fields_by_alias(m.per_model), *fields_by_alias(m.shared)]}
    return tuple(sorted(names))


def fields_by_alias(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {(f.alias or name): f for name, f in model.model_fields.items()}
