"""`adapter_config.json` of a PEFT adapter folder: the typed `AdapterConfig` every kind reads it into,
and the checks of its fields the kinds share. Each kind's own reading is in `surgery.adapters.kinds`;
`surgery.adapters.load.read_config` picks the kind by `peft_type`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

from surgery.errors import InputError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
VIRTUAL_TOKENS = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CPT", "ADAPTION_PROMPT")


@dataclass(frozen=True)
class AdapterConfig:
    path: str                       # the adapter folder
    peft_type: str                  # LORA, IA3 or VERA
    r: int = 0                      # LoRA and VeRA rank (0 for IA3)
    alpha: float = 0.0              # LoRA alpha
    use_rslora: bool = False
    use_dora: bool = False
    lora_bias: bool = False
    fan_in_fan_out: bool = False    # weights stored (in, out), as GPT-2's Conv1D does
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    target_modules: tuple[str, ...] | str = ()
    modules_to_save: tuple[str, ...] = ()
    save_projection: bool = True    # VeRA: shared projections stored in the file (else regenerated)
    projection_prng_key: int = 0    # VeRA: seed of the shared projections

    @property
    def file(self) -> str:
        return os.path.join(self.path, CONFIG)

    @property
    def weights_file(self) -> str:
        return os.path.join(self.path, WEIGHTS)

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """The rank and alpha PEFT gives `module` (first matching pattern, in the file's order)."""
        return _pattern(self.rank_pattern, module, self.r), _pattern(self.alpha_pattern, module, self.alpha)

    def lora_scale(self, module: str) -> float:
        """alpha / r, or alpha / sqrt(r) for rsLoRA (Kalajdzievski 2023, arXiv:2312.03732)."""
        r, alpha = self.rank_alpha(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _pattern(patterns: dict, module: str, default):
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG))


def raw_config(path: str) -> dict:
    """The adapter folder's `adapter_config.json` as a dict, unvalidated (any PEFT type)."""
    return _load(path, os.path.join(path, CONFIG))


def _load(path: str, file: str) -> dict:
    if not os.path.isdir(path):
        raise InputError(f"adapter folder {path!r} does not exist (or is not a folder)")
    if not os.path.isfile(file):
        raise InputError(f"{path}: no {CONFIG}; this is not a PEFT adapter folder")
    try:
        with open(file) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{file}: invalid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{file}: not a JSON object")
    return raw


def number(file: str, raw: dict, key: str, kind: type):
    if key not in raw:
        raise InputError(f"{file}: {key}: missing; a PEFT {raw.get('peft_type')} config always has it")
    return positive(file, key, raw[key], kind)


def positive(file: str, where: str, value, kind: type):
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            or (kind is int and value != int(value))):
        raise InputError(f"{file}: {where}: {value!r} is not a positive {'integer' if kind is int else 'number'}")
    return kind(value)


def targets(raw: dict) -> tuple[str, ...] | str:
    value = raw.get("target_modules") or ()
    return value if isinstance(value, str) else tuple(value)


def names(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())
