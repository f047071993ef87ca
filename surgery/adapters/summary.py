"""What an adapter folder holds, for `surgery inspect`: type, rank(s), alpha, target modules and
trainable parameter count, read from the config and the safetensors header alone."""

from __future__ import annotations

import json
import os

from surgery.adapters.config import CONFIG
from surgery.adapters.kinds import PEFT_TYPES
from surgery.adapters.load import read_config
from surgery.adapters.mapping import AdapterWeights, group_parts
from surgery.errors import InputError

FROZEN = ("base_model.vera_A", "base_model.vera_B")  # VeRA's shared random projections are not trained


def summarize(path: str) -> dict:
    weights = AdapterWeights(path)
    tensors = weights.tensors
    try:
        config = read_config(path)
    except InputError as e:  # still worth describing: say why it cannot be folded
        trainable = sum(i.numel for i in tensors.values())
        return {"type": _raw_type(path), "foldable": f"no: {e}", "trainable_parameters": trainable}
    modules, _, replaced = group_parts(tensors)
    ranks = sorted({tensors[p.get("A") or p.get("embedding_A") or p["lambda_d"]].shape[0]
                    for p in modules.values() if {"A", "embedding_A", "lambda_d"} & set(p)})
    kind = config.peft_type + (" (DoRA)" if config.use_dora else "") + (" (rsLoRA)" if config.use_rslora else "")
    trainable = sum(i.numel for n, i in tensors.items() if n not in FROZEN and ".base_layer." not in n)
    out = {"type": kind, "ranks": ranks, "targets": sorted({m.rsplit(".", 1)[-1] for m in modules}),
           "modules": len(modules), "replaces": sorted(replaced), "trainable_parameters": trainable}
    out.update(PEFT_TYPES[config.peft_type].describe(config))
    weights.close()
    return out


def _raw_type(path: str) -> str:
    try:
        with open(os.path.join(path, CONFIG)) as f:
            return str(json.load(f).get("peft_type", "?"))
    except (OSError, ValueError, AttributeError):
        return "?"
