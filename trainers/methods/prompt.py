"""Prompt tuning: `num_virtual_tokens` trained input embeddings put in front of every sequence; the
whole model stays frozen (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning", arXiv:2104.08691). By default the prompt starts as the embeddings of randomly drawn
vocabulary tokens, which the paper found better than a random start.

Realised with PEFT's PromptTuningConfig; the result is a PEFT adapter folder. PEFT's model returns
logits for the virtual positions too, (B, n + T, V); the objectives score logits position by
position against input_ids, so `attach` and `load` drop those first n positions, giving (B, T, V).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from trainers.methods import peft_adapter
from trainers.methods.method import TrainingMethod


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="length of the trained prompt, in tokens")
    init: Literal["sample_vocab", "random"] = Field(
        "sample_vocab", description="start from embeddings of random vocabulary tokens, or from N(0, 1) noise")


def attach(model: torch.nn.Module, config: Config) -> torch.nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit

    init = PromptTuningInit.SAMPLE_VOCAB if config.init == "sample_vocab" else PromptTuningInit.RANDOM
    prompt = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=config.num_virtual_tokens,
                                prompt_tuning_init=init)
    return align_logits(peft_adapter.wrap(model, prompt))


def align_logits(model: torch.nn.Module) -> torch.nn.Module:
    """Drop the virtual positions from the logits of every forward pass (generation is not affected:
    PEFT generates through the base model's own forward)."""
    virtual = model.peft_config[model.active_adapter].num_virtual_tokens

    def drop_virtual(module, args, output):
        if getattr(output, "logits", None) is not None:
            output.logits = output.logits[:, virtual:]  # (B, n + T, V) -> (B, T, V)
        return output

    model.register_forward_hook(drop_virtual)
    return model


def load(base_path: str, adapter_folder: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The base with a saved prompt, for inference, with logits aligned to input_ids as in training."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    return align_logits(PeftModel.from_pretrained(base, adapter_folder)).eval()


def save(model, folder: str, config: Config) -> None:
    peft_adapter.save(model, folder)


METHOD = TrainingMethod("prompt", Config, attach, save, saves="adapter")
