"""What a training objective is: its typed fields, the rows it trains on, the loop that runs it and
the pieces that loop calls. Each objective is one file of trainers/objectives/ ending in
`OBJECTIVE = Objective(...)`, and one line of the registry (trainers/objectives/__init__.py).

Adding an objective:
- `Config`: its spec fields, a subclass of `Config` below (`ReferenceConfig` when the user may name
  the frozen reference, `RewardConfig` when samples are scored by rewards), with bounds and a
  description for each field;
- `shapes`: the row shapes it trains on (trainers/data.py SHAPES); other rows are refused with file and line;
- `loop`: which loop runs it (a key of LOOPS; trainers/loops/ holds the loops). What that loop calls
  is required here, and checked when the `Objective` is built:
  - "offline": rows read from the data, a step at a time (SFT, pretraining, the preference objectives).
    `batches` (how rows become a batch) and `loss` (a pure function of the model and the batch);
  - "grpo_rollouts": completions sampled by the policy each step and scored by rewards. `loss`;
  - "ppo_rollouts": PPO's rollouts, value head and GAE (trainers/loops/ppo_rollouts.py); its math is
    trainers/objectives/ppo.py;
  - "rejection_sampling", "self_play": rounds of sampling and an ordinary offline run on what was kept.
- `uses_reference(config)`: whether the run needs a frozen reference policy (the base, the base with
  the adapter switched off, or the config's `reference` folder; trainers/reference.py). An offline
  objective that uses one gives `annotate`, which adds the reference's numbers to each batch before
  `loss` (under no_grad);
- `load_model`: only when the objective trains another model class than a causal LM (the reward
  model's scalar head).

And one test file: the loss on numbers worked out by hand, and against TRL's where TRL has it (the
same token ids in, the same loss out).

The batch is the objective's business: the loops never look inside it except for `num_items`, the
count of items (tokens, pairs, completions) its loss is a mean over, by which micro-batches and
processes are weighted so that accumulation equals one big batch. The offline loop gives `collate` the
run's `Layout` (trainers/packing.py: padded, or packed rows with position ids restarting per sequence,
and how many positions' logits the loss may form at once); an objective whose `collate` lays its
sequences out by it, and whose `loss` scores them through trainers/logprobs.py `scores`, says so with
`Batches(..., packs=True)`, and then accepts `batch.packing`. Packing changes how a micro-batch's rows
are laid out, never which rows it holds, so the loss and the step are the same as unpacked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from surgery.errors import InputError
from trainers import rewards
from trainers.data import SHAPES, Row
from trainers.templates import Template

# (model, batch, config) -> a scalar loss (mean over the batch's items) and floats to log
Loss = Callable[[torch.nn.Module, dict[str, torch.Tensor], BaseModel], tuple[torch.Tensor, dict[str, float]]]
# (reference, batch, config) -> the batch with what `loss` needs from the reference
Annotate = Callable[[Callable[..., Any], dict[str, torch.Tensor], BaseModel], dict[str, torch.Tensor]]
# (row, tokenizer, template, config) -> token lists, each one sequence (cut to batch.max_length by the loop)
Encode = Callable[[Row, Any, Template, BaseModel], dict]
# (encoded rows, pad id, layout) -> the batch's tensors, `num_items` included (the layout defaults to padded)
Collate = Callable[..., dict[str, torch.Tensor]]
# (folder, dtype, trust_remote_code) -> the model to attach the method to
LoadModel = Callable[[str, torch.dtype, bool], torch.nn.Module]

# What each loop calls, so what an objective run by it must give.
LOOPS: dict[str, tuple[str, ...]] = {
    "offline": ("batches", "loss"),
    "grpo_rollouts": ("loss",),
    "ppo_rollouts": (),
    "rejection_sampling": (),
    "self_play": (),
}


class Config(BaseModel):
    """Base of every objective's spec fields: typed, no unknown keys."""

    model_config = ConfigDict(extra="forbid")


class ReferenceConfig(Config):
    """The fields of an objective compared against a frozen reference policy."""

    reference: str | None = Field(None, description="the frozen reference's folder (default: the base, or the "
                                  "base with the adapter switched off)")


class RewardConfig(Config):
    """The fields of an objective that scores samples with rewards (trainers/rewards.py): functions, a
    model, their weights. Function names are checked here; `package.module:function` is imported when
    the run starts."""

    reward_functions: list[str] = Field(default_factory=list, description="built-in names (world.add, ...) or "
                                        "'package.module:function'")
    reward_model: str | None = Field(None, description="a sequence-classification folder with num_labels=1")
    reward_weights: list[float] | None = Field(None, description="one weight per function, then the model's "
                                               "(default 1)")
    _functions_field: str = PrivateAttr("reward_functions")  # the spec field the functions were given in

    @model_validator(mode="after")
    def _rewards(self):
        self.check_rewards()
        return self

    def check_rewards(self, names: bool = True) -> None:
        count = len(self.reward_functions) + (self.reward_model is not None)
        if count == 0:
            raise ValueError("give reward_functions (e.g. [world.add]) or a reward_model folder, or both")
        if self.reward_weights is not None and len(self.reward_weights) != count:
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {count} rewards "
                             "(the functions, then the model)")
        for name in self.reward_functions if names else ():
            try:
                rewards.check_name(name)
            except InputError as e:
                raise ValueError(str(e)) from None

    def load_reward(self, template: Template, device: torch.device | str = "cpu", policy_tokenizer=None,
                    where: str = "") -> rewards.Reward:
        """The weighted sum; `policy_tokenizer` when the model reads the policy's token ids (PPO)."""
        return rewards.load(self.reward_functions, self.reward_model, self.reward_weights, template=template,
                            device=device, policy_tokenizer=policy_tokenizer, where=where,
                            functions_field=self._functions_field)


def never(config: BaseModel) -> bool:
    return False


def always(config: BaseModel) -> bool:
    return True


@dataclass(frozen=True)
class Batches:
    """How an offline objective turns rows into a batch: `encode` once per row, `collate` per micro-batch
    (with the run's layout: `packs` when it can lay its rows out packed)."""

    encode: Encode
    collate: Collate
    packs: bool = False


@dataclass(frozen=True)
class Objective:
    name: str  # the spec's `objective.name`
    title: str  # how messages name it ("DPO step 5: ...")
    config: type[Config]
    shapes: tuple[str, ...]
    loop: str  # a key of LOOPS
    batches: Batches | None = None
    loss: Loss | None = None
    annotate: Annotate | None = None
    uses_reference: Callable[[BaseModel], bool] = never
    load_model: LoadModel | None = None

    def __post_init__(self) -> None:
        if self.loop not in LOOPS:
            raise ValueError(f"objective {self.name!r}: unknown loop {self.loop!r}; choose one of {', '.join(LOOPS)}")
        missing = [f for f in LOOPS[self.loop] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"objective {self.name!r}: the {self.loop} loop calls {', '.join(missing)}; give them")
        if self.loop == "offline" and (self.annotate is None) != (self.uses_reference is never):
            raise ValueError(f"objective {self.name!r}: an offline objective that uses a reference gives `annotate` "
                             "(how the reference's numbers reach the batch), and only then")
        unknown = set(self.shapes) - set(SHAPES)
        if not self.shapes or unknown:
            raise ValueError(f"objective {self.name!r}: shapes {sorted(unknown) or '()'}; choose among "
                             f"{', '.join(SHAPES)}")
        if not issubclass(self.config, Config):
            raise ValueError(f"objective {self.name!r}: its config must subclass trainers.objectives.objective.Config")
