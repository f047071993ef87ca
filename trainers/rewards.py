"""Rewards of sampled completions: Python functions, a reward model, or a weighted sum of them.

    reward = load(functions=["world.add"], model="models/rm", weights=[1.0, 0.5], template=template)
    scores = reward(prompts, completions, rows)     # (N,) float32 tensor

A reward function is `f(prompt: str, completion: str, row: dict) -> float` (`row` holds the data row's
fields: a reference answer, say). It is named either by a built-in name (the small world's exact-answer
checks `world.add`, `world.reverse`, `world.capital`, `world.refuse`: 1.0 for the exact answer, else
0.0) or as `package.module:function`. A function that raises or returns something other than a finite
number stops the run with an error naming the prompt and completion (checkpoints already written
are complete and kept).

A reward model is a Hugging Face sequence-classification folder with one label (what the `reward`
objective writes). It scores the conversation as the run renders it: the prompt as a user turn and the
completion as the assistant turn under the run's chat template (plain prompt + completion + end of
sequence with the template `none`), tokenized with the reward model's own tokenizer.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from surgery.errors import InputError
from trainers.data import Row
from trainers.templates import Template
from trainers.world.answers import ANSWERS

RewardFunction = Callable[[str, str, dict], float]


def exact(answer: Callable[[str], str | None]) -> RewardFunction:
    def reward(prompt: str, completion: str, row: dict) -> float:
        return float(completion == answer(prompt))

    return reward


BUILTIN: dict[str, RewardFunction] = {f"world.{task}": exact(answer) for task, answer in ANSWERS.items()}


def function(name: str) -> RewardFunction:
    """A built-in reward by name, or `package.module:function` imported."""
    if name in BUILTIN:
        return BUILTIN[name]
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise InputError(f"reward function {name!r}: give a built-in name ({', '.join(BUILTIN)}) or "
                         "'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise InputError(f"reward function {name!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise InputError(f"reward function {name!r}: {type(fn).__name__} is not callable")
    return fn


def call(name: str, fn: RewardFunction, prompt: str, completion: str, row: dict) -> float:
    """One reward, checked: a finite number, or an error naming the prompt."""
    try:
        value = fn(prompt, completion, row)
    except Exception as e:  # noqa: BLE001 - the user's code: any failure is reported with the sample it failed on
        raise InputError(f"reward function {name!r} raised {type(e).__name__}: {e} on prompt {prompt!r} "
                         f"(completion {completion!r}); fix the function or the data row") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"reward function {name!r} returned {value!r} on prompt {prompt!r} (completion "
                         f"{completion!r}); a reward is a finite int or float")
    return float(value)


class RewardModel:
    """A sequence-classification model (num_labels=1) scoring rendered conversations."""

    def __init__(self, folder: str, template: Template, device: torch.device | str = "cpu", dtype=torch.float32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise InputError(f"reward model {folder!r}: cannot load a sequence-classification model from it "
                             f"({e})") from None
        if self.model.config.num_labels != 1:
            raise InputError(f"reward model {folder!r}: it has {self.model.config.num_labels} labels; a reward model "
                             "has num_labels=1 (one score per sequence)")
        self.folder, self.template, self.device = folder, template, device

    def text(self, prompt: str, completion: str) -> str:
        from trainers.objectives.sft import rendered

        row = Row({"prompt": prompt, "completion": completion}, f"reward model {self.folder}", 0)
        return rendered(row, self.tokenizer, self.template)[0]

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Scores, batched by token length: no padding, so no reliance on how a model finds its last token."""
        ids = [self.tokenizer(self.text(p, c), add_special_tokens=False)["input_ids"]
               for p, c in zip(prompts, completions)]
        scores = [0.0] * len(ids)
        for length in sorted(set(map(len, ids))):
            which = [i for i, x in enumerate(ids) if len(x) == length]
            x = torch.tensor([ids[i] for i in which], device=self.device)  # (b, length)
            logits = self.model(input_ids=x, attention_mask=torch.ones_like(x)).logits[:, 0].float()  # (b,)
            for i, v in zip(which, logits.tolist()):
                scores[i] = v
        return scores


@dataclass
class Reward:
    """Σ_k weight_k · reward_k over the functions, then the model (in that order)."""

    functions: list[tuple[str, RewardFunction]]
    model: RewardModel | None
    weights: list[float]

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict] | None = None) -> torch.Tensor:
        rows = rows if rows is not None else [{} for _ in prompts]
        columns = [[call(name, fn, p, c, r) for p, c, r in zip(prompts, completions, rows)]
                   for name, fn in self.functions]
        if self.model is not None:
            columns.append(self.model(prompts, completions))
        table = torch.tensor(columns, dtype=torch.float32).reshape(len(columns), len(prompts))  # (K, N)
        return (torch.tensor(self.weights, dtype=torch.float32).unsqueeze(1) * table).sum(0)  # (N,)


def load(functions: list[str], model: str | None = None, weights: list[float] | None = None, *,
         template: Template, device: torch.device | str = "cpu") -> Reward:
    count = len(functions) + (model is not None)
    if count == 0:
        raise InputError("a reward needs at least one reward function or a reward model")
    if weights is not None and len(weights) != count:
        raise InputError(f"{len(weights)} reward weights for {count} rewards (the functions, then the model)")
    return Reward([(name, function(name)) for name in functions],
                  RewardModel(model, template, device) if model is not None else None,
                  list(weights) if weights is not None else [1.0] * count)


class Fields(BaseModel):
    """The reward fields of an objective's spec (GRPO, RFT): functions, a model, their weights."""

    model_config = ConfigDict(extra="forbid")
    reward_functions: list[str] = Field(default_factory=list, description="built-in names (world.add, ...) or "
                                        "'package.module:function'")
    reward_model: str | None = Field(None, description="a sequence-classification folder with num_labels=1")
    reward_weights: list[float] | None = Field(None,
                                               description="one weight per function, then the model's (default 1)")

    @model_validator(mode="after")
    def _rewards(self):
        count = len(self.reward_functions) + (self.reward_model is not None)
        if count == 0:
            raise ValueError("give reward_functions (e.g. [world.add]) or a reward_model folder, or both")
        if self.reward_weights is not None and len(self.reward_weights) != count:
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {count} rewards "
                             "(the functions, then the model)")
        for name in self.reward_functions:
            try:
                function(name)
            except InputError as e:
                raise ValueError(str(e)) from None
        return self

    def load_reward(self, template: Template, device: torch.device | str = "cpu") -> Reward:
        return load(self.reward_functions, self.reward_model, self.reward_weights, template=template, device=device)
