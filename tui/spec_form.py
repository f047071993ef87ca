"""The merge spec as form fields: the texts typed into the designer, keyed by the spec path they fill
(`base_model`, `models.1.model`, `models.1.parameters.density`, `parameters.lambda`, `seed`), turned
into the spec dict that `surgery merge` reads, and checked by the same spec model with the same
located messages. No validation of its own: every rule lives in `surgery.merge.spec` and `surgery.merge.plan`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic.fields import FieldInfo

from surgery.errors import SpecError
from surgery.merge.methods import REGISTRY
from surgery.merge.methods.method import Method, is_compat
from surgery.merge.params import bounds_text, check_parameters, evaluate
from surgery.merge.spec import MergeSpec, parse_spec


def parse_value(text: str) -> Any:
    """What the text means in YAML: '0.5' -> 0.5, 'true' -> True, '0, 0.5, 1' -> [0, 0.5, 1] (a gradient
    over layers); '' -> None (left out). Text YAML cannot read is kept as it is, for the spec to refuse."""
    text = text.strip()
    if not text:
        return None
    if "," in text and not text.startswith("["):
        text = f"[{text}]"
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text.strip()


def per_model_fields(method: Method) -> dict[str, FieldInfo]:
    """The per-model parameters the form offers: all but those kept for mergekit compatibility only."""
    return {name: f for name, f in method.per_model.model_fields.items() if not is_compat(f)}


def shared_fields(method: Method) -> dict[str, FieldInfo]:
    """The global parameters the form offers (not those kept for mergekit compatibility only), by the
    name the YAML uses (`lambda`, not the attribute `lambda_`)."""
    return {(f.alias or name): f for name, f in method.shared.model_fields.items() if not is_compat(f)}


def choices(field: FieldInfo) -> tuple[str, ...] | None:
    """The values a true/false or one-of parameter takes, as YAML writes them; None for any other."""
    if field.annotation is bool:
        return ("true", "false")
    if get_origin(field.annotation) is Literal:
        return tuple(str(v).lower() if isinstance(v, bool) else str(v) for v in get_args(field.annotation))
    return None


def hint(field: FieldInfo) -> str:
    """The field's description, then its bounds when it has any: what a label or tooltip shows."""
    text, bounds = field.description or "", bounds_text(field)
    return text if bounds == "must be in (-inf, inf)" else f"{text}; {bounds}"


def placeholder(key: str, field: FieldInfo, method: Method) -> str:
    if key in method.required:
        return "required"
    return "" if field.default is None else str(field.default).lower()


def spec_data(method: str, texts: dict[str, str], count: int) -> dict:
    """The spec dict of the form: `count` model rows; empty fields are left out, as a hand-written
    YAML would leave them."""
    data: dict[str, Any] = {"merge_method": method}
    if texts.get("base_model", "").strip():
        data["base_model"] = texts["base_model"].strip()
    data["models"] = [_model_entry(texts, i) for i in range(count)]
    shared = _params(texts, "parameters.")
    if shared:
        data["parameters"] = shared
    for key in ("dtype", "seed"):
        value = parse_value(texts.get(key, ""))
        if value is not None:
            data[key] = value
    return data


def _model_entry(texts: dict[str, str], i: int) -> dict:
    entry: dict[str, Any] = {"model": texts.get(f"models.{i}.model", "").strip()}
    params = _params(texts, f"models.{i}.parameters.")
    if params:
        entry["parameters"] = params
    return entry


def _params(texts: dict[str, str], prefix: str) -> dict:
    values = {k.removeprefix(prefix): parse_value(v) for k, v in texts.items() if k.startswith(prefix)}
    return {k: v for k, v in values.items() if v is not None}


def check_spec(data: dict, file: str) -> tuple[MergeSpec | None, SpecError | None]:
    """The spec model's verdict and the method's parameter check, as `surgery merge --dry-run` runs
    them before it opens a model; the opening itself is `surgery.merge.plan.plan_merge`'s."""
    try:
        spec = parse_spec(data, file)
        if spec.merge_method in REGISTRY:
            check_parameters(spec, REGISTRY[spec.merge_method], file)
        return spec, None
    except SpecError as e:
        return None, e


def empty_row(data: dict, file: str) -> SpecError | None:
    """The first model row left empty, as an error under it: the planner reads '' as the models folder
    itself and says that folder holds no weights, a message about no field of the form."""
    for i, entry in enumerate(data.get("models") or []):
        if not str(entry.get("model", "")).strip():
            return SpecError(file, f"models.{i}.model", "no model yet: type or pick (F2) a model folder, or drop "
                             "the row (F4)")
    return None


def owner(field: str, paths: list[str]) -> str:
    """The longest of `paths` that `field` (an error's location) lies in, on dot boundaries; '' if none.
    'models.1.parameters.density.2' lies in 'models.1.parameters.density' and in 'models.1'."""
    inside = [p for p in paths if p and (field == p or field.startswith(p + "."))]
    return max(inside, key=len, default="")


def drop_model(texts: dict[str, str], i: int) -> dict[str, str]:
    """The texts without model row `i`, later rows moved up one."""
    out = {}
    for key, value in texts.items():
        parts = key.split(".")
        if parts[0] != "models":
            out[key] = value
        elif int(parts[1]) != i:
            row = int(parts[1])
            out[".".join(["models", str(row - (row > i)), *parts[2:]])] = value
    return out


def layer_values(setting: Any, layers: int) -> list[Any]:
    """A setting's value at each of `layers` layers, interpolated by the engine's own rule
    (`surgery.merge.params.evaluate`, depth t = k / (layers - 1) as the plan computes it)."""
    return [evaluate(setting, "", k / (layers - 1) if layers > 1 else 1.0) for k in range(layers)]


def spec_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)
