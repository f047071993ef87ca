"""What the PEFT-backed methods share: wrapping a model with a PEFT config, and saving the adapter.

Not a method itself (it has no entry in the registry). PEFT freezes every base weight and leaves
only the adapter's parameters trainable; `save` writes PEFT's own folder format
(`adapter_config.json` + `adapter_model.safetensors`), which `PeftModel.from_pretrained` loads and
`surgery fold` folds into the base (the methods that change weights: LoRA, DoRA, IA3, VeRA).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from surgery.errors import InputError, SpecError

ALL_LINEAR = "all-linear"
# PEFT's "all-linear": every linear (or GPT-2 Conv1D) layer of the decoder blocks, not the output head
Targets = Literal["all-linear"] | Annotated[list[str], Field(min_length=1)]
TARGETS_HELP = ("module names (or name suffixes) to adapt, or 'all-linear': q/k/v/o and gate/up/down on Llama, "
                "Qwen2 and Mistral; c_attn, c_proj and c_fc on GPT-2")


def wrap(model: torch.nn.Module, peft_config) -> torch.nn.Module:
    """The model with the adapter injected (PEFT edits `model` in place); only the adapter trains."""
    from peft import PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        raise InputError("the model already carries a PEFT adapter; attach a method to a plain base model "
                         "(fold the adapter first with `surgery fold` to train on top of it)")
    if type(model).__name__.endswith("ForSequenceClassification"):  # a reward model: PEFT's SEQ_CLS task
        peft_config.task_type = "SEQ_CLS"  # also trains and saves the new scalar head (`score`)
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:
        if "not found in the base model" in str(e):
            problem = f"none of {peft_config.target_modules} is a module of {type(model).__name__}"
        elif "specify `target_modules`" in str(e):
            problem = f"PEFT has no default target modules for {type(model).__name__}; name them"
        else:
            raise
        raise SpecError("run spec", "method.target_modules",
                        f"{problem}; its linear layers are {', '.join(linear_names(model))}") from None


def linear_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (`q_proj`, `c_attn`, ...), to suggest targets."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, (torch.nn.Linear, Conv1D)) and name})


def has_conv1d(model: torch.nn.Module) -> bool:
    """GPT-2 style models store linear weights as Conv1D, (in, out) rather than (out, in): PEFT's
    `fan_in_fan_out` must then be set, so the adapter's delta is transposed to match."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def save(model: torch.nn.Module, folder: str) -> None:
    """PEFT's adapter folder: adapter_config.json and adapter_model.safetensors (adapter tensors only)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise InputError(f"cannot save a PEFT adapter from a {type(model).__name__}: attach the method first")
    model.save_pretrained(folder, safe_serialization=True)
