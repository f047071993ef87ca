"""Rewards of sampled completions, one interface for GRPO, RFT, PPO and the RLAIF judges: Python
functions, a reward model, or a weighted sum of them.

    reward = load(["world.add"], model="models/rm", weights=[1.0, 0.5], template=template)
    scores = reward(prompts, completions, rows)                     # (N,) float32 tensor
    scores = reward(prompts, completions, rows, tokens=(ids, mask))  # the model reads these token ids

A reward function is `f(prompt: str, completion: str, row: dict) -> float` (`row` holds the data row's
fields: a reference answer, say), named either `package.module:function` or by a registered name
`NAMESPACE.NAME`. Packages register namespaces through the `surgery.rewards` entry-point group, a
mapping of names to functions (the small world's exact-answer checks are `world.add`, `world.reverse`,
`world.capital` and `world.refuse`, from trainers/world/rewards.py). A function that raises or returns
something other than a finite number stops the run with an error naming the prompt and completion
(checkpoints already written are complete and kept).

A reward model is a Hugging Face sequence-classification folder with one label (what the `reward`
objective writes). It reads a completion in one of two ways:
- as text (GRPO, RFT, the judges): the prompt as a user turn and the completion as the assistant turn
  under the run's chat template (plain prompt + completion + end of sequence with the template
  `none`), tokenized with the reward model's own tokenizer;
- as the policy's own token ids (PPO, as TRL's PPO did): prompt and completion exactly as sampled,
  read at each sequence's last real token (the stop token when the completion ended). Its tokenizer
  must then be the policy's; another is refused rather than silently scoring other tokens.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch

from surgery.errors import InputError
from trainers.data import Row
from trainers.models import tokenizer_difference
from trainers.templates import Template

RewardFunction = Callable[[str, str, dict], float]
GROUP = "surgery.rewards"  # the entry-point group of named reward functions


@functools.cache
def registered() -> dict[str, RewardFunction]:
    """Every named reward of the installed packages: {"world.add": function, ...}."""
    return {f"{ep.name}.{name}": fn for ep in entry_points(group=GROUP) for name, fn in ep.load().items()}


def check_name(name: str) -> None:
    """A registered name or the form 'package.module:function' (imported only when the run starts)."""
    module, sep, attr = name.partition(":")
    if name not in registered() and not (sep and module and attr):
        raise InputError(f"reward function {name!r}: give a built-in name ({', '.join(registered())}) or "
                         "'package.module:function'")


def function(name: str) -> RewardFunction:
    """A registered reward by name, or `package.module:function` imported."""
    check_name(name)
    if name in registered():
        return registered()[name]
    module, _, attr = name.partition(":")
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
    except Exception as e:  # noqa: BLE001  (the user's code: any failure is reported with the sample it failed on)
        raise InputError(f"reward function {name!r} raised {type(e).__name__}: {e} on prompt {prompt!r} "
                         f"(completion {completion!r}); fix the function or the data row") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"reward function {name!r} returned {value!r} on prompt {prompt!r} (completion "
                         f"{completion!r}); a reward is a finite int or float")
    return float(value)


class RewardModel:
    """A frozen sequence-classification model (num_labels=1) that scores completions rendered under
    `template` (None: it reads the policy's token ids only); `where` names it in messages."""

    def __init__(self, folder: str, template: Template | None, device: torch.device | str = "cpu",
                 dtype=torch.float32, where: str = "reward model"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise InputError(f"{where} {folder!r}: cannot load a sequence-classification model and tokenizer from "
                             f"it ({e})") from None
        if self.model.config.num_labels != 1:
            raise InputError(f"{where} {folder!r}: a reward model has one output (num_labels=1), this one has "
                             f"{self.model.config.num_labels}; train it with the reward-model objective")
        self.model.to(device).eval().requires_grad_(False)
        self.folder, self.template, self.device, self.where = folder, template, device, where

    def require_tokenizer(self, policy_tokenizer) -> None:
        """Refuse to read the policy's token ids with another tokenizer, or without a head to read them."""
        problem = tokenizer_difference(self.tokenizer, policy_tokenizer)
        if problem:
            raise InputError(f"{self.where} {self.folder!r}: its tokenizer differs from the policy's ({problem}); "
                             "the reward model reads the policy's token ids, so train it from the policy's base (or "
                             "with its tokenizer)")
        model = self.model
        if not hasattr(model, "score") or not hasattr(model, model.base_model_prefix):
            raise InputError(f"{self.where} {self.folder!r}: {type(model).__name__} has no `score` head over a "
                             "backbone; use a Llama-, Qwen-, Mistral- or GPT-2-style sequence-classification model")

    def text(self, prompt: str, completion: str) -> str:
        from trainers.objectives.sft import rendered

        assert self.template is not None, "a reward model loaded to read token ids scores no text"
        row = Row({"prompt": prompt, "completion": completion}, f"reward model {self.folder}", 0)
        return rendered(row, self.tokenizer, self.template)[0]

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Scores of the rendered texts, batched by token length: no padding, so no reliance on how a
        model finds its last token."""
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


def load_reward_model(folder: str, policy_tokenizer, where: str, device: torch.device | str = "cpu") -> RewardModel:
    """A reward model that reads the policy's token ids (refused with another tokenizer)."""
    model = RewardModel(folder, None, device, where=where)
    model.require_tokenizer(policy_tokenizer)
    return model


@torch.no_grad()
def score_sequences(reward: RewardModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) scores of right-padded sequences of the policy's token ids, read at each one's last real token."""
    model = reward.model
    device = next(model.parameters()).device
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                      use_cache=False).last_hidden_state  # (B, T, H)
    last = attention_mask.long().sum(1) - 1  # (B,)
    picked = hidden[torch.arange(hidden.shape[0], device=device), last.to(device)]  # (B, H)
    return model.score(picked).squeeze(-1).float().cpu()


@dataclass
class Reward:
    """Σ_k weight_k · reward_k over the functions, then the model (in that order)."""

    functions: list[tuple[str, RewardFunction]]
    model: RewardModel | None
    weights: list[float]

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict] | None = None,
                 tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(N,) rewards; with `tokens` (input_ids, attention_mask, each (N, T)) the model reads those ids."""
        rows = rows if rows is not None else [{} for _ in prompts]
        columns = [[call(name, fn, p, c, r) for p, c, r in zip(prompts, completions, rows)]
                   for name, fn in self.functions]
        if self.model is not None:
            columns.append(self.model(prompts, completions) if tokens is None
                           else score_sequences(self.model, *tokens).tolist())
        table = torch.tensor(columns, dtype=torch.float32).reshape(len(columns), len(prompts))  # (K, N)
        return (torch.tensor(self.weights, dtype=torch.float32).unsqueeze(1) * table).sum(0)  # (N,)


def imported(names: list[str], where: str = "", field: str = "reward_functions") -> list[tuple[str, RewardFunction]]:
    """The named functions, imported; an error is located at `where.field` (a spec file and objective)."""
    try:
        return [(name, function(name)) for name in names]
    except InputError as e:
        raise InputError(f"{where}.{field}: {e}" if where else str(e)) from None


def load(functions: list[str], model: str | None = None, weights: list[float] | None = None, *,
         template: Template, device: torch.device | str = "cpu", policy_tokenizer=None, where: str = "",
         functions_field: str = "reward_functions") -> Reward:
    """The weighted sum; with `policy_tokenizer`, the model reads the policy's token ids (checked to share
    its tokenizer). `where` (a spec file and objective) and the fields locate the messages."""
    count = len(functions) + (model is not None)
    if count == 0:
        raise InputError("a reward needs at least one reward function or a reward model")
    if weights is not None and len(weights) != count:
        raise InputError(f"{len(weights)} reward weights for {count} rewards (the functions, then the model)")
    named = imported(functions, where, functions_field)
    scorer, field = None, f"{where}.reward_model" if where else "reward model"
    if model is not None:
        scorer = RewardModel(model, template, device, where=field) if policy_tokenizer is None else \
            load_reward_model(model, policy_tokenizer, field, device)
    return Reward(named, scorer, list(weights) if weights is not None else [1.0] * count)
