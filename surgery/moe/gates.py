"""Router weights of a mixture of experts, one function per `gate_mode` (the registry GATE_MODES).

Each returns a (layers, experts, hidden) float32 tensor: row e of layer l is expert e's router row.
The prompted modes follow mergekit-moe (Goddard, 2023, "Mixture of Experts for Clowns"):

- `hidden`: run the base on each expert's prompts (the tokenizer's BOS prepended, left padding) and
  take, at every layer l, the hidden state entering that layer at the prompt's last token, averaged
  over the prompts; negative prompts' averages are subtracted; each row is scaled to unit norm.
- `hidden_avg`: the same with the hidden states averaged over every token of the prompt.
- `cheap_embed`: the sum of the prompts' token embeddings, unit norm, the same at every layer (no
  forward pass); negative prompts' sums (unit norm too) are subtracted before the final scaling.
- `random`: standard normal rows; `uniform_random`: U(-1/sqrt(hidden), 1/sqrt(hidden)), torch.nn.Linear's
  initialisation. Both from a generator seeded by the spec's `seed`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from surgery.moe.spec import Expert


@dataclass(frozen=True)
class GateInputs:
    base: str                 # the base model's folder
    layers: int
    hidden: int
    seed: int
    device: str = "cpu"


GateMode = Callable[[GateInputs, list[Expert]], torch.Tensor]


def load_base(folder: str, device: str):
    """The base model (float32, evaluation mode) and its tokenizer set up as mergekit-moe sets it up:
    left padding, BOS as the padding token (EOS where there is no BOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # the command's own bar is the one shown
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.bos_token or tokenizer.eos_token
    return model, tokenizer


def tokenize(tokenizer, prompts: list[str]) -> dict[str, torch.Tensor]:
    return tokenizer([(tokenizer.bos_token or "") + p for p in prompts], return_tensors="pt", padding=True,
                     add_special_tokens=False)


def prompt_states(model, tokenizer, prompts: list[str], average: bool) -> torch.Tensor:
    """(layers, hidden): the states entering each layer, at the last token or averaged over the real
    tokens of each prompt, then averaged over the prompts."""
    batch = {k: v.to(model.device) for k, v in tokenize(tokenizer, prompts).items()}
    with torch.no_grad():
        states = torch.stack(model(**batch, output_hidden_states=True).hidden_states[:-1])  # (L, B, T, H)
    if average:
        mask = batch["attention_mask"][None, :, :, None].to(states.dtype)  # (1, B, T, 1)
        per_prompt = (states * mask).sum(2) / mask.sum(2)  # (L, B, H)
    else:
        per_prompt = states[:, :, -1, :]  # left padding: the last position is every prompt's last token
    return per_prompt.mean(1).float().cpu()


def gate_rows(experts: list[Expert], states: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """(L, E, H): per expert, states(positive prompts) - states(negative prompts), unit norm per layer."""
    rows = []
    for e in experts:
        row = states(e.positive_prompts)
        if e.negative_prompts:
            row = row - states(e.negative_prompts)
        rows.append(row / row.norm(dim=-1, keepdim=True).clamp(min=1e-8))
    return torch.stack(rows, dim=1)


def hidden(inputs: GateInputs, experts: list[Expert]) -> torch.Tensor:
    model, tokenizer = load_base(inputs.base, inputs.device)
    return gate_rows(experts, lambda prompts: prompt_states(model, tokenizer, prompts, average=False))


def hidden_avg(inputs: GateInputs, experts: list[Expert]) -> torch.Tensor:
    model, tokenizer = load_base(inputs.base, inputs.device)
    return gate_rows(experts, lambda prompts: prompt_states(model, tokenizer, prompts, average=True))


def cheap_embed(inputs: GateInputs, experts: list[Expert]) -> torch.Tensor:
    from transformers import AutoTokenizer

    from surgery.io.reader import ModelFolder

    tokenizer = AutoTokenizer.from_pretrained(inputs.base)
    tokenizer.padding_side, tokenizer.pad_token = "left", tokenizer.bos_token or tokenizer.eos_token
    folder = ModelFolder(inputs.base)
    embed = folder.read(embedding_name(folder.tensors)).float()  # (V, H)
    folder.close()

    def states(prompts: list[str]) -> torch.Tensor:
        batch = tokenize(tokenizer, prompts)
        summed = embed[batch["input_ids"][batch["attention_mask"].bool()]].sum(0)  # every real token: (H,)
        return (summed / summed.norm().clamp(min=1e-8)).expand(inputs.layers, -1)  # (L, H)

    return gate_rows(experts, states)


def embedding_name(tensors) -> str:
    return next(n for n in tensors if n.endswith("embed_tokens.weight") or n.endswith("wte.weight"))


def random(inputs: GateInputs, experts: list[Expert]) -> torch.Tensor:
    g = torch.Generator().manual_seed(inputs.seed)
    return torch.randn((inputs.layers, len(experts), inputs.hidden), generator=g)


def uniform_random(inputs: GateInputs, experts: list[Expert]) -> torch.Tensor:
    g, bound = torch.Generator().manual_seed(inputs.seed), math.sqrt(1.0 / inputs.hidden)
    return torch.rand((inputs.layers, len(experts), inputs.hidden), generator=g) * 2 * bound - bound


GATE_MODES: dict[str, GateMode] = {"hidden": hidden, "hidden_avg": hidden_avg, "cheap_embed": cheap_embed,
                                   "random": random, "uniform_random": uniform_random}


def degenerate_layers(gates: torch.Tensor, threshold: float = 5.0) -> list[int]:
    """Layers whose router rows are close to linearly dependent (condition number above `threshold`):
    some expert there is rarely preferred, usually because its prompts resemble another's."""
    return [i for i in range(gates.shape[0]) if gates.shape[1] > 1 and torch.linalg.cond(gates[i]) > threshold]
