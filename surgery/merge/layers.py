"""Where a tensor sits in the stack: layer tensors carry an index (`model.layers.3.mlp...`,
`transformer.h.3.attn...`); the rest come before the layers (embeddings) or after them (final norm,
output head). Layer slices renumber names; everything else keeps its name.
"""

from __future__ import annotations

import re

LAYER = re.compile(r"^(.*?\.(?:layers|h|blocks|layer)\.)(\d+)(\..+)$")
PRE_MARKERS = ("embed", "wte", "wpe", "tok_embeddings")


def layer_of(name: str) -> int | None:
    m = LAYER.match(name)
    return int(m.group(2)) if m else None


def with_layer(name: str, index: int) -> str:
    m = LAYER.match(name)
    assert m, name
    return f"{m.group(1)}{index}{m.group(3)}"


def is_pre(name: str) -> bool:
    """Non-layer tensors that belong before the layers (taken from the first slice's models)."""
    return any(k in name for k in PRE_MARKERS)


def num_layers(names: list[str]) -> int:
    found = [i for i in map(layer_of, names) if i is not None]
    return max(found) + 1 if found else 0


def natural_key(name: str) -> tuple:
    """Sort key that reads the numbers in a name as numbers: `layers.2` before `layers.10`. re.split with a
    group alternates text and digits, so equal positions always compare text with text, int with int."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


def layer_template(names: list[str], index: int) -> list[str]:
    """Names of layer `index`'s tensors, in sorted order."""
    return sorted(n for n in names if layer_of(n) == index)
