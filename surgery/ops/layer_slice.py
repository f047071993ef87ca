"""Keep, drop and repeat layer ranges of one model (`surgery slice IN OUT --layers 0:4,2:6`).

A passthrough frankenmerge of one model (as mergekit's `slices`): each range `START:END` (END
excluded, as in Python) contributes its layers in order, renumbered from 0; the embeddings come before
them and the final norm and head after, and config.json's `num_hidden_layers` (and per-layer lists)
follow the new stack. The engine streams and writes it atomically.
"""

from __future__ import annotations

from surgery.errors import SpecError
from surgery.io.reader import ModelFolder
from surgery.merge.layers import num_layers
from surgery.merge.plan import MergePlan, plan_merge
from surgery.merge.spec import parse_spec

FLAG = "--layers"


def parse_ranges(text: str, depth: int) -> list[tuple[int, int]]:
    """'0:4,2:6' -> [(0, 4), (2, 6)]; a single 'N' is N:N+1. Checked against the model's `depth`."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise SpecError(FLAG, "", f"no layer range in {text!r}; write START:END ranges, e.g. 0:4,2:6")
    if not all(parts):  # a doubled or trailing comma: a range was probably lost in typing
        raise SpecError(FLAG, text, f"item {parts.index('') + 1} of {len(parts)} is empty; write one START:END "
                        "range between each pair of commas, e.g. 0:4,2:6")
    return [_parse_range(part, depth) for part in parts]


def _parse_range(part: str, depth: int) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in part.split(":")) if ":" in part else (int(part), int(part) + 1)
    except ValueError:
        raise SpecError(FLAG, part, "not a layer range; write START:END with whole numbers, e.g. 0:4") from None
    if not 0 <= a < b:
        raise SpecError(FLAG, part, "a range needs 0 <= START < END (END is excluded, as in Python)")
    if b > depth:
        raise SpecError(FLAG, part, f"goes past the last layer: the model has {depth} layers (0:{depth} is all)")
    return a, b


def plan_slice(path: str, layers: str, allow_pickle: bool = False) -> MergePlan:
    """The plan that writes `path` with only (and in the order of) the layer ranges in `layers`."""
    folder = ModelFolder(path, allow_pickle=allow_pickle)
    folder.close()
    depth = num_layers(list(folder.tensors))
    if depth == 0:
        raise SpecError(FLAG, "", f"{folder.path}: no numbered layers found in the tensor names; nothing to slice")
    slices = [{"sources": [{"model": folder.path, "layer_range": [a, b]}]} for a, b in parse_ranges(layers, depth)]
    spec = parse_spec({"merge_method": "passthrough", "slices": slices}, "slice")
    return plan_merge(spec, "slice", allow_pickle=allow_pickle)
