"""`adapter_config.json` of a PEFT adapter folder, read into a typed, validated `AdapterConfig`.

Only adapters whose effect is a change of weights can be folded: LoRA (with rsLoRA, DoRA, rank and
alpha patterns), IA3 and VeRA. Options that change what the adapter computes in ways a folded weight
cannot express are refused here, before any tensor is read.
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
SUPPORTED = ("LORA", "IA3", "VERA")
VIRTUAL_TOKENS = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CPT", "ADAPTION_PROMPT")
# LoRA options that change the forward pass beyond W + scale * B @ A; set to anything truthy, we refuse.
UNFOLDABLE = ("layer_replication", "target_parameters", "trainable_token_indices", "alora_invocation_tokens",
              "use_qalora", "use_bdlora", "velora_config", "monteclora_config", "kasa_config", "arrow_config",
              "megatron_config")


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


def read_config(path: str) -> AdapterConfig:
    """The validated config of the adapter folder `path`."""
    file = os.path.join(path, CONFIG)
    raw = _load(path, file)
    kind = str(raw.get("peft_type", "")).upper()
    if kind in VIRTUAL_TOKENS:
        raise InputError(f"{file}: peft_type: {kind} cannot be folded into weights: it adds virtual tokens, "
                         "not weight deltas; keep using it through PEFT")
    if kind not in SUPPORTED:
        raise InputError(f"{file}: peft_type: {kind or 'missing'!r} cannot be folded; supported types: "
                         f"{', '.join(SUPPORTED)}")
    return {"LORA": _lora, "IA3": _ia3, "VERA": _vera}[kind](os.path.abspath(path), file, raw)


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


def _lora(path: str, file: str, raw: dict) -> AdapterConfig:
    for key in UNFOLDABLE:
        if raw.get(key):
            raise InputError(f"{file}: {key}: set to {raw[key]!r}, which changes the forward pass in a way a "
                             "folded weight cannot express; fold an adapter trained without it")
    r, alpha = _number(file, raw, "r", int), _number(file, raw, "lora_alpha", float)
    ranks = {k: _positive(file, f"rank_pattern.{k}", v, int) for k, v in (raw.get("rank_pattern") or {}).items()}
    alphas = {k: _positive(file, f"alpha_pattern.{k}", v, float) for k, v in (raw.get("alpha_pattern") or {}).items()}
    return AdapterConfig(path, "LORA", r, alpha, bool(raw.get("use_rslora")), bool(raw.get("use_dora")),
                         bool(raw.get("lora_bias")), bool(raw.get("fan_in_fan_out")), ranks, alphas,
                         _targets(raw), _names(raw.get("modules_to_save")))


def _ia3(path: str, file: str, raw: dict) -> AdapterConfig:
    return AdapterConfig(path, "IA3", fan_in_fan_out=bool(raw.get("fan_in_fan_out")), target_modules=_targets(raw),
                         modules_to_save=_names(raw.get("modules_to_save")))


def _vera(path: str, file: str, raw: dict) -> AdapterConfig:
    key = raw.get("projection_prng_key", 0)
    if not isinstance(key, int):
        raise InputError(f"{file}: projection_prng_key: {key!r} is not an integer")
    return AdapterConfig(path, "VERA", _number(file, raw, "r", int), fan_in_fan_out=bool(raw.get("fan_in_fan_out")),
                         target_modules=_targets(raw), modules_to_save=_names(raw.get("modules_to_save")),
                         save_projection=bool(raw.get("save_projection", True)), projection_prng_key=key)


def _number(file: str, raw: dict, key: str, kind: type):
    if key not in raw:
        raise InputError(f"{file}: {key}: missing; a PEFT {raw.get('peft_type')} config always has it")
    return _positive(file, key, raw[key], kind)


def _positive(file: str, where: str, value, kind: type):
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            or (kind is int and value != int(value))):
        raise InputError(f"{file}: {where}: {value!r} is not a positive {'integer' if kind is int else 'number'}")
    return kind(value)


def _targets(raw: dict) -> tuple[str, ...] | str:
    value = raw.get("target_modules") or ()
    return value if isinstance(value, str) else tuple(value)


def _names(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())
