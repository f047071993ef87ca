"""Training methods: how a model is prepared for training and how the result is saved, one file each.

REGISTRY maps the `method.name` of a run spec to its `TrainingMethod` (trainers/methods/method.py
says what a method gives, and how to add one).
"""

from __future__ import annotations

from trainers.methods import (
    bottleneck,
    dora,
    freeze,
    full,
    ia3,
    lora,
    lora_plus,
    p_tuning_v2,
    prefix,
    prompt,
    qlora,
    vera,
)
from trainers.methods.method import TrainingMethod

REGISTRY: dict[str, TrainingMethod] = {m.METHOD.name: m.METHOD for m in (
    full, freeze, lora, qlora, dora, lora_plus, vera, ia3, prefix, prompt, p_tuning_v2, bottleneck)}
