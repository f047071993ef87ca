"""Every YAML spec (a merge spec, a training run, a labelling run) is read here: YAML in, a typed
pydantic model out, and any problem one `SpecError` located as `file: field.path (line N): problem`.

The line is the YAML line of the deepest key of the field path that the file has; a spec built in
code (a dict, no text) gets the field path alone. A file that is not YAML is located at the line the
parser stopped at. `--set field.path=value` overrides are applied to the mapping before validation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from surgery.errors import SpecError

M = TypeVar("M", bound=BaseModel)
Refine = Callable[[list[str], str, dict], tuple[list[str], str]]  # (location, message, pydantic error) -> both
SCALAR_TAGS = ("bool", "int", "float", "str", "none")  # pydantic names a union's branches by their types


@dataclass(frozen=True)
class SpecFile:
    path: str
    text: str        # the YAML as written, for line numbers
    data: dict       # its mapping, not yet validated


def read(path: str, kind: str, shape: str, overrides: tuple[str, ...] = ()) -> SpecFile:
    """The YAML mapping of the `kind` spec at `path` ("spec", "run spec"), with `overrides` applied; a
    missing file, a YAML syntax error or a non-mapping (`shape` says what a spec holds) is a SpecError."""
    if not os.path.isfile(path):
        raise SpecError(path, "", f"no such {kind} file")
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # a reader error spans two lines
        raise SpecError(path, "", f"not valid YAML ({problem})", line=error_line(e, text)) from None
    except RecursionError:  # the parser recurses once per level of nesting
        opened = text.count("[") + text.count("{")
        raise SpecError(path, "", f"not valid YAML (nested too deeply for the parser: {opened} open brackets); "
                        f"a {kind} is a few levels deep") from None
    data = mapping(data, path, f"a {kind} is a YAML mapping {shape}")
    for item in overrides:
        apply_override(data, item, path)
    return SpecFile(path, text, data)


def read_text(path: str) -> str:
    """The spec's text; a file that is not UTF-8 (a binary, or another encoding) is located at its line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SpecError(path, "", f"cannot read it ({e.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(path, "", f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); a spec is YAML "
                        "text: save it as UTF-8", line=raw[:e.start].count(b"\n") + 1) from None


def error_line(e: yaml.YAMLError, text: str) -> int | None:
    """The 1-based line where the parser stopped: its mark, or (a character YAML refuses) its position."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        return mark.line + 1
    position = getattr(e, "position", None)  # yaml.reader.ReaderError: an index into the text
    return text[:position].count("\n") + 1 if isinstance(position, int) else None


def mapping(data: Any, file: str, problem: str) -> dict:
    if not isinstance(data, dict):
        raise SpecError(file, "", problem)
    return data


def validate(model: type[M], data: dict, file: str, text: str | None = None, refine: Refine | None = None,
             prefix: str = "") -> M:
    """`data` as a `model`, or the first error located in `file` (under `prefix`, a field path)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        field, problem = first_error(e, data, refine)
        raise located(file, f"{prefix}.{field}" if prefix else field, problem, text) from None


def located(file: str, field: str, problem: str, text: str | None) -> SpecError:
    """A SpecError at `field`, with the YAML line of that field when the text is known."""
    return SpecError(file, field, problem, line=yaml_line(text, field.split(".")) if text and field else None)


def first_error(e: ValidationError, data: Any = None, refine: Refine | None = None) -> tuple[str, str]:
    """The most specific of pydantic's errors (the deepest location) as (field.path, problem)."""
    err = sorted(e.errors(), key=lambda x: -len(x["loc"]))[0]
    loc = field_path(err["loc"], data)
    if err["type"] == "extra_forbidden":
        return ".".join(loc), f"unknown field '{loc[-1]}'"
    if err["type"] == "missing":
        return ".".join(loc), "required field is missing"
    got = err.get("input")
    shown = f" (got {got!r})" if isinstance(got, (int, float, str, bool)) else ""
    msg = err["msg"].removeprefix("Value error, ") + shown
    if refine is not None:
        loc, msg = refine(loc, msg, err)
    return ".".join(loc), msg


def field_path(loc: tuple, data: Any) -> list[str]:
    """pydantic's location less the names it gives union branches ("float", "list[str]", "Conditional"),
    which no spec writes; a part that is a key of the data at that level is always kept."""
    out, node = [], data
    for part in loc:
        present = isinstance(node, dict) and part in node
        if isinstance(part, str) and not present and ("[" in part or part in SCALAR_TAGS or part[:1].isupper()):
            continue
        out.append(str(part))
        node = _child(node, part)
    return out


def _child(node: Any, part: Any) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def yaml_line(text: str, path: list[str]) -> int | None:
    """The 1-based line of the deepest key (or list entry) of `path` in the YAML `text`."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                return line
            line, node = match[0][0].start_mark.line + 1, match[0][1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def apply_override(data: dict, item: str, file: str) -> None:
    """`optim.lr=3e-4`: the value is read as YAML (numbers, booleans, lists); missing mappings are made."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise SpecError(file, f"--set {item}", "write overrides as field.path=value, e.g. optim.lr=3e-4")
    parts, node = key.split("."), data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise SpecError(file, f"--set {key}", f"'{'.'.join(parts[:i + 1])}' is not a mapping")
    last = parts[-1]
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as e:
        raise SpecError(file, f"--set {key}", f"{raw!r} is not a YAML value ({getattr(e, 'problem', e)})") from None
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError(file, f"--set {key}", f"'{'.'.join(parts[:-1])}' is not a mapping")
