"""`surgery merge-adapters`: several PEFT adapters of one base merged into one adapter, without the base.

LoRA adapters combine in adapter space (`surgery.adapters.lora_merge`); soft prompts average into a
soup (`surgery.adapters.soup`). This module checks the inputs are all of one family and sends them on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from surgery.adapters import lora_merge, soup
from surgery.adapters.config import CONFIG, raw_config
from surgery.errors import InputError, SpecError
from surgery.io.output import check_output_path


def peft_type(path: str) -> str:
    return str(raw_config(path).get("peft_type", "")).upper() or "missing"


def family(kind: str) -> str:
    """lora, prompt (the soft prompts a soup averages), or the peft_type itself."""
    return "lora" if kind == "LORA" else "prompt" if kind in soup.PROMPT_TYPES else kind


def check_family(paths: Sequence[str]) -> str:
    kinds = [peft_type(p) for p in paths]
    for path, kind in zip(paths[1:], kinds[1:]):
        if family(kind) != family(kinds[0]):
            raise InputError(f"{os.path.join(path, CONFIG)}: peft_type {kind}, but {paths[0]} is {kinds[0]}; merge "
                             "adapters of one kind (LoRA with LoRA, soft prompts of one type together)")
    return family(kinds[0])


def weights_of(paths: Sequence[str], weights: Sequence[float]) -> list[float]:
    if not paths:
        raise InputError("merge-adapters needs at least one adapter folder")
    if weights and len(weights) != len(paths):
        raise SpecError("--weight", " ".join(f"{w:g}" for w in weights), f"given {len(weights)} times for "
                        f"{len(paths)} adapters; give one per adapter (in the adapters' order) or none")
    return list(weights) or [1.0] * len(paths)


def merge_adapters(paths: Sequence[str], out: str, settings: lora_merge.AdapterMergeSettings,
                   weights: Sequence[float] = (), force: bool = False) -> tuple[str, str]:
    """Merge `paths` into the adapter folder `out`; returns (its absolute path, a summary)."""
    w = weights_of(paths, weights)
    check_output_path(out, [os.path.abspath(p) for p in paths], force)  # again when writing; early is cheaper
    kind = check_family(paths)
    if kind == "prompt":
        return _soup(list(paths), w, out, settings, force)
    if kind != "lora":
        lora_merge.open_source(paths[0], w[0])  # raises the located refusal
    plan = lora_merge.plan_adapter_merge(list(paths), w, settings)
    try:
        path = lora_merge.write_merge(plan, out, force)
        return path, lora_merge.describe(plan)
    finally:
        plan.close()


def _soup(paths: list[str], weights: list[float], out: str, settings: lora_merge.AdapterMergeSettings,
          force: bool) -> tuple[str, str]:
    for flag, value in (("--combination", settings.combination), ("--rank", settings.rank),
                        ("--density", settings.density)):
        if value is not None:
            raise SpecError(flag, str(value), "soft prompts are averaged (a soup); this flag applies to LoRA adapters")
    planned = soup.plan_soup(paths, weights)
    try:
        return soup.write_soup(planned, out, force), soup.describe(planned)
    finally:
        planned.close()
