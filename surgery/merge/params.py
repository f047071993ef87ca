"""Parameter settings as mergekit writes them: a value, a gradient (a list interpolated across the
layers of a slice), or conditions `{filter, value}` picked by a substring of the tensor name.
Validated once against the method's typed parameters, with located errors; resolved per tensor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from surgery.errors import SpecError
from surgery.merge.spec import Conditional, Setting


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
