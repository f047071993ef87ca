"""`surgery diff`'s outputs: plain-text tables (per tensor, per layer, per module type, whole model),
the same as JSON, and the layers × module-type grids behind the heat map."""

from __future__ import annotations

import json
import math

from surgery.diagnose.diff import Diff, layer_key
from surgery.diagnose.module_types import module_type, type_order

DEFINITIONS = {
    "change A/B": "||A - B||_F / ||B||_F (no base)",
    "change M": "||M - BASE||_F / ||BASE||_F",
    "cos A,B": "cosine similarity of the task vectors A - BASE and B - BASE",
    "sign conflicts": "share of contested parameters (nonzero task vector in >= 2 models) whose nonzero "
                      "task-vector entries do not all have the same sign",
}


# a column's measure (its first word) -> the colour scale of its heat map panel, fixed where the measure is
# bounded, so that near-equal values (cosines all within rounding of 1) look equal; None: the data's maximum
RANGES = {"change": (0.0, None), "cos": (-1.0, 1.0), "sign": (0.0, 1.0)}


def colour_ranges(columns: list[str]) -> dict[str, tuple[float, float | None]]:
    """{column: (low, high)} of the heat map's colour scales."""
    return {c: RANGES[c.split()[0]] for c in columns}


def _layer_sort(key: int | str) -> tuple[int, int]:
    return (1, 0) if key == "other" else (0, int(key))


def sections(d: Diff, tensors: bool = True) -> dict[str, dict[str, dict]]:
    """{'tensors': {name: metrics}, 'layers': {...}, 'types': {...}, 'total': {'all': metrics}}."""
    layers = d.group(layer_key)
    types = d.group(module_type)
    out = {
        "layers": {str(k): d.metrics(layers[k]) for k in sorted(layers, key=_layer_sort)},
        "types": {k: d.metrics(types[k]) for k in type_order(set(types))},
        "total": {"all": d.metrics(d.total())},
    }
    return ({"tensors": {n: d.metrics(s) for n, s in d.tensors.items()}} if tensors else {}) | out


def as_json(d: Diff) -> str:
    return json.dumps({"models": d.labels, "base": d.base, "columns": d.columns(), "definitions": DEFINITIONS,
                       **sections(d), "skipped": d.skipped}, indent=2)


def describe(d: Diff, tensors: bool = True) -> str:
    cols = d.columns()
    blocks = []
    for title, rows in sections(d, tensors).items():
        width = max(len(title), *(len(k) for k in rows))
        lines = [f"{title:<{width}}  " + "  ".join(f"{c:>{max(len(c), 9)}}" for c in cols)]
        for key, values in rows.items():
            lines.append(f"{key:<{width}}  " + "  ".join(f"{_fmt(values[c]):>{max(len(c), 9)}}" for c in cols))
        blocks.append("\n".join(lines))
    if d.skipped:
        blocks.append("skipped\n" + "\n".join(f"  {n}: {why}" for n, why in d.skipped.items()))
    return "\n\n".join(blocks)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def grids(d: Diff) -> tuple[list[str], list[str], dict[str, list[list[float]]]]:
    """(row labels: layers then 'other', column labels: module types, {column: values[row][col]});
    NaN where no tensor has that layer and type."""
    cells = d.group(lambda name: (layer_key(name), module_type(name)))
    rows = sorted({k[0] for k in cells}, key=_layer_sort)
    types = type_order({k[1] for k in cells})
    out = {}
    for col in d.columns():
        out[col] = [[_nan(d.metrics(cells[(r, t)])[col]) if (r, t) in cells else math.nan for t in types] for r in rows]
    return [str(r) for r in rows], types, out


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
