"""Training methods: how a model is prepared for training and how the result is saved.

REGISTRY maps the `method.name` of a run spec to its module. A method module provides
- `Config`: a pydantic model with `extra="forbid"` holding its hyper-parameters, with bounds;
- `attach(model, config) -> torch.nn.Module`: the model to train, where only the method's parameters
  have `requires_grad=True`;
- `save(model, folder, config) -> None`: the standard format written into an (already temporary)
  folder: a Hugging Face model folder (`full`, `freeze`) or a PEFT adapter folder;
- optionally `load_model(path, config, dtype) -> PreTrainedModel` (QLoRA loads 4-bit), otherwise the
  loop calls `AutoModelForCausalLM.from_pretrained(path, dtype=dtype)`;
- optionally `param_groups(model, config, lr) -> list[dict]` (LoRA+ gives B a higher lr), otherwise
  one group of the trainable parameters;
- optionally `WHOLE_MODEL = True` when `save` writes every weight: a resumed run then loads the
  checkpoint folder itself; otherwise it loads the base, attaches, and restores the trainable tensors.
"""

from __future__ import annotations

from types import ModuleType

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

REGISTRY: dict[str, ModuleType] = {
    "full": full,
    "freeze": freeze,
    "lora": lora,
    "qlora": qlora,
    "dora": dora,
    "lora_plus": lora_plus,
    "vera": vera,
    "ia3": ia3,
    "prefix": prefix,
    "prompt": prompt,
    "p_tuning_v2": p_tuning_v2,
    "bottleneck": bottleneck,
}
