"""What a training method is: how a loaded model is prepared for training (which weights train) and how
the result is saved. Each method is one file of trainers/methods/ ending in `METHOD = TrainingMethod(...)`,
and one line of the registry (trainers/methods/__init__.py).

Adding a method:
- `config`: its spec fields, a pydantic model with `extra="forbid"`, bounds and descriptions;
- `attach(model, config)`: the model to train, with `requires_grad=True` on the method's parameters
  only; it names them the same way every time (a resumed run restores them by name);
- `save(model, folder, config)`: the standard format, written into an (already temporary) folder;
- `saves`: what `save` writes. "model": every weight, as a Hugging Face model folder (`full`,
  `freeze`); a resumed run then loads the checkpoint folder itself, and FSDP may shard it. "adapter":
  the trained part only (a PEFT adapter folder, say); a resumed run loads the base, attaches the
  method and restores the trainable tensors kept in the checkpoint's trainer_state;
- `load_model(path, config, dtype)`: only when the base must be loaded another way (QLoRA: 4-bit);
- `param_groups(model, config, lr)`: only when the optimizer needs other groups than the trainable
  parameters with weight decay on matrices (LoRA+: B at a higher learning rate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel

Attach = Callable[[torch.nn.Module, BaseModel], torch.nn.Module]
Save = Callable[[torch.nn.Module, str, BaseModel], None]
LoadModel = Callable[[str, BaseModel, torch.dtype], torch.nn.Module]
ParamGroups = Callable[[torch.nn.Module, BaseModel, float], list[dict]]


@dataclass(frozen=True)
class TrainingMethod:
    name: str  # the spec's `method.name`
    config: type[BaseModel]
    attach: Attach
    save: Save
    saves: Literal["model", "adapter"]
    load_model: LoadModel | None = None
    param_groups: ParamGroups | None = None

    def __post_init__(self) -> None:
        if self.config.model_config.get("extra") != "forbid":
            raise ValueError(f"method {self.name!r}: its config must forbid unknown fields (extra='forbid')")
        if self.saves not in ("model", "adapter"):
            raise ValueError(f"method {self.name!r}: saves is 'model' or 'adapter', not {self.saves!r}")

    @property
    def whole_model(self) -> bool:
        """Its folders hold every weight (a resumed run loads the checkpoint folder itself)."""
        return self.saves == "model"
