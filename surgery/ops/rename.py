"""Rename tensors with regular expressions (`surgery rename IN OUT --map 'REGEX=REPLACEMENT' ...`).

Each `--map` is applied in the order given, as `re.sub(REGEX, REPLACEMENT, name)` on the result of
the previous ones (so `\\1` and `\\g<name>` refer to groups). The split is at the last `=`, since
tensor names never hold one. Everything is checked before a byte is written: a bad pattern, a map
that matches no tensor, two tensors renamed to one name, or an empty name is an error naming the map
and both keys. The tensors then go through the engine as a passthrough plan, unchanged in value and
dtype; config.json and the tokenizer are copied as they are.
"""

from __future__ import annotations

import re

import torch

from surgery.errors import SpecError
from surgery.io.reader import ModelFolder
from surgery.merge.methods.passthrough import METHOD as PASSTHROUGH
from surgery.merge.plan import MergePlan, TensorJob, TensorSource
from surgery.merge.spec import parse_spec

FLAG = "--map"
MODEL = "input"


def parse_maps(texts: list[str]) -> list[tuple[re.Pattern, str, str]]:
    """['a\\.(\\d+)=b.\\1', ...] -> [(compiled pattern, replacement, the text as given), ...]"""
    if not texts:
        raise SpecError(FLAG, "", "give at least one --map 'REGEX=REPLACEMENT'")
    return [_parse_map(text) for text in texts]


def _parse_map(text: str) -> tuple[re.Pattern, str, str]:
    pattern, sep, replacement = text.rpartition("=")
    if not sep or not pattern:
        raise SpecError(FLAG, text, "write REGEX=REPLACEMENT, e.g. '^transformer\\.=model.'")
    try:
        return re.compile(pattern), replacement, text
    except re.error as e:
        raise SpecError(FLAG, text, f"{pattern!r} is not a valid regular expression ({e})") from None


def renamed(names: list[str], maps: list[tuple[re.Pattern, str, str]]) -> dict[str, str]:
    """{old name: new name} for every tensor; errors for unused maps, empty names and collisions."""
    out, used = {}, set()
    for name in names:
        new = name
        for i, (pattern, replacement, text) in enumerate(maps):
            try:
                new, hits = pattern.subn(replacement, new)
            except (re.error, IndexError) as e:
                raise SpecError(FLAG, text, f"bad replacement {replacement!r} for tensor {name!r} ({e})") from None
            used |= {i} if hits else set()
        if not new:
            raise SpecError(FLAG, "", f"tensor {name!r} would be renamed to an empty name")
        out[name] = new
    unused = [text for i, (_, _, text) in enumerate(maps) if i not in used]
    if unused:
        raise SpecError(FLAG, unused[0], "matches no tensor name; see `surgery inspect` for the names")
    _check_collisions(out)
    return out


def _check_collisions(mapping: dict[str, str]) -> None:
    seen: dict[str, str] = {}
    for old, new in mapping.items():
        if new in seen:
            raise SpecError(FLAG, "", f"tensors {seen[new]!r} and {old!r} would both be named {new!r}; "
                            "refine the patterns so that names stay distinct")
        seen[new] = old


def plan_rename(path: str, maps: list[str], allow_pickle: bool = False) -> MergePlan:
    """The plan that writes every tensor of `path` under its new name, unchanged."""
    parsed = parse_maps(maps)
    folder = ModelFolder(path, allow_pickle=allow_pickle)
    mapping = renamed(sorted(folder.tensors), parsed)
    jobs = [_job(folder, old, new) for old, new in mapping.items()]
    spec = parse_spec({"merge_method": "passthrough", "models": [{"model": folder.path}]}, "rename")
    return MergePlan(spec=spec, file="rename", method=PASSTHROUGH, folders={MODEL: folder}, jobs=jobs,
                     config_model=MODEL, config=dict(folder.config), tokenizer_path=folder.path)


def _job(folder: ModelFolder, old: str, new: str) -> TensorJob:
    info = folder.tensors[old]
    # the engine computes in float32: float64 tensors (and integer buffers) are copied byte for byte instead
    return TensorJob(new, info.shape, info.dtype, None, (TensorSource(MODEL, old, FLAG),), PASSTHROUGH.shared(),
                     (PASSTHROUGH.per_model(),), copy=info.dtype == torch.float64 or not info.dtype.is_floating_point)
