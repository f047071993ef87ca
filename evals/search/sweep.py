"""A sweep of one merge parameter: a base spec, the dotted path of one field in it (for example
`models.0.parameters.weight`) and a list of values; for each value the spec with that field set is
merged by the engine and scored. With task arithmetic from a parent to one fine-tune, the weight is
the interpolation between the two, as Lin et al. 2023 ("Mitigating the Alignment Tax of RLHF",
https://arxiv.org/abs/2309.06256) sweep it to trade reward against alignment tax.

Every point's spec is validated and planned before the first merge, so a bad path or a value out of
a parameter's bounds stops the sweep with the spec validator's located message.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from evals.analysis.metrics import PERPLEXITIES
from evals.report.leaderboard import mean_score
from evals.search.candidates import Scorer, Scores, check_spec, folder_name, merge_spec
from surgery.errors import InputError, SpecError
from surgery.io.output import output_lock


@dataclass(frozen=True)
class SweepPoint:
    """One value of the parameter, the folder its merge was written to, and its scores."""

    value: object
    folder: str
    scores: Scores


def parse_values(text: str) -> list:
    """'0,0.25,0.5' -> [0, 0.25, 0.5]: each item read as YAML would read it (numbers, true/false, text)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError("--values is empty; give the values to try, comma-separated, e.g. 0,0.25,0.5")
    values = [yaml.safe_load(t) for t in items]
    repeated = sorted({t for t in items if items.count(t) > 1})
    if repeated:
        raise InputError(f"--values repeats {', '.join(repeated)}; give each value once")
    return values


def set_field(data: dict, path: str, value: object, file: str) -> dict:
    """A copy of the spec `data` with the field at the dotted `path` set to `value`. Mapping keys that
    are missing are added (the spec validator then says whether they mean anything); list entries must
    exist. A path that cannot be followed is a SpecError naming `file` and `path`."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise SpecError(file, path, "not a dotted field path; write e.g. models.0.parameters.weight")
    out = copy.deepcopy(data)
    node = out
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            node = _set_item(node, part, value, last, ".".join(parts[:depth]), path, file)
        elif isinstance(node, dict):
            node = _set_key(node, part, value, last)
        else:
            where = ".".join(parts[:depth])
            raise SpecError(file, path, f"{where} is a value ({node!r}), not a mapping or a list to go into")
    return out


def _set_key(node: dict, key: str, value: object, last: bool):
    if last:
        node[key] = value
    elif node.get(key) is None:
        node[key] = {}
    return node[key]


def _set_item(node: list, part: str, value: object, last: bool, where: str, path: str, file: str):
    if not part.isdigit() or int(part) >= len(node):
        raise SpecError(file, path, f"{where} is a list of {len(node)}: '{part}' is not an index in 0..{len(node) - 1}")
    if last:
        node[int(part)] = value
    return node[int(part)]


def point_specs(data: dict, file: str, param: str, values: Sequence, models_dir: str | None = None) -> list[dict]:
    """The spec of every point, each validated and planned (no tensor read) before any is merged."""
    specs = [set_field(data, param, v, file) for v in values]
    for spec in specs:
        check_spec(spec, file, models_dir)
    return specs


def sweep(data: dict, file: str, param: str, values: Sequence, out: str, score: Scorer,
          models_dir: str | None = None) -> list[SweepPoint]:
    """Merge and score the spec at each value of `param`; point i goes to `out/<last part>=<value>`. `out` is
    locked while the sweep runs, so a second sweep into it stops at once."""
    specs = point_specs(data, file, param, values, models_dir)
    points = []
    with output_lock(out):
        for value, spec in zip(values, specs):
            name = folder_name(f"{param.split('.')[-1]}={value}")
            folder = merge_spec(spec, file, os.path.join(out, name), models_dir)
            points.append(SweepPoint(value, folder, score(folder)))
    return points


def sweep_rows(points: Sequence[SweepPoint], param: str) -> list[dict]:
    """One row per point: the value, the score on each task, and the leaderboard's mean."""
    tasks = list(dict.fromkeys(t for p in points for t in p.scores))
    return [{param: p.value, **{t: p.scores[t].value if t in p.scores else None for t in tasks},
             "mean": mean_score(p.scores)} for p in points]


def sweep_series(points: Sequence[SweepPoint]) -> dict[str, list[float | None]]:
    """{task: score at each point} for the tasks scored on a bounded scale, then {"mean": ...}: the lines
    of the sweep's plot (perplexities, unbounded, left out)."""
    tasks = [t for t in dict.fromkeys(t for p in points for t in p.scores)
             if not any(p.scores[t].metric in PERPLEXITIES for p in points if t in p.scores)]
    series = {t: [p.scores[t].value if t in p.scores else None for p in points] for t in tasks}
    return series | {"mean": [mean_score(p.scores) for p in points]}
