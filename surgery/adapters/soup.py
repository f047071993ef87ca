"""Soft-prompt soups: PROMPT_TUNING, P_TUNING or PREFIX_TUNING adapters of one shape averaged, tensor by
tensor, into one adapter of the same type (the "model soup" of Wortsman et al. 2022,
https://arxiv.org/abs/2203.05482, applied to learned virtual tokens).

PEFT saves these adapters' virtual tokens as `prompt_embeddings` (num_virtual_tokens x token_dim;
PREFIX_TUNING: num_virtual_tokens x 2 * layers * token_dim), already passed through any prompt
encoder, and loads them as they are for inference; so the soup is a plain weighted mean
sum_i w_i T_i / sum_i w_i of those tensors. The first input's adapter_config.json is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from surgery.adapters.config import CONFIG, WEIGHTS, raw_config
from surgery.adapters.mapping import AdapterWeights
from surgery.errors import InputError, SpecError
from surgery.io.output import atomic_folder, check_output_path, write_json
from surgery.io.writer import Shard, ShardWriter

PROMPT_TYPES = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")
# config fields that fix the tensors' shapes or how PEFT uses them: they must agree across inputs
SAME = ("peft_type", "task_type", "base_model_name_or_path", "num_virtual_tokens", "token_dim",
        "num_transformer_submodules", "num_layers", "num_attention_heads")


@dataclass(frozen=True)
class Soup:
    paths: list[str]
    configs: list[dict]
    weights: list[AdapterWeights]
    mix: list[float]            # each input's share, summing to 1

    def close(self) -> None:
        for w in self.weights:
            w.close()


def shares(weights: list[float]) -> list[float]:
    """The weights normalised to sum to 1; they must be >= 0 with a positive sum."""
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise SpecError("--weight", " ".join(f"{w:g}" for w in weights), "a soft-prompt soup is a weighted mean: "
                        "give weights >= 0 with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def check_configs(paths: list[str], configs: list[dict]) -> None:
    for path, config in zip(paths[1:], configs[1:]):
        for key in SAME:
            if config.get(key) != configs[0].get(key):
                raise InputError(f"{os.path.join(path, CONFIG)}: {key}: {config.get(key)!r} but "
                                 f"{os.path.join(paths[0], CONFIG)} has {configs[0].get(key)!r}; only soft prompts "
                                 "of one type and shape, for one base, average into a soup")


def check_tensors(paths: list[str], weights: list[AdapterWeights]) -> None:
    first = {n: tuple(i.shape) for n, i in weights[0].tensors.items()}
    for path, w in zip(paths[1:], weights[1:]):
        here = {n: tuple(i.shape) for n, i in w.tensors.items()}
        for name in sorted(set(first) | set(here)):
            if first.get(name) != here.get(name):
                raise InputError(f"{os.path.join(path, WEIGHTS)}: tensor {name!r} is "
                                 f"{list(here[name]) if name in here else 'missing'} but in {paths[0]} it is "
                                 f"{list(first[name]) if name in first else 'missing'}; only soft prompts of one "
                                 "shape average into a soup")


def plan_soup(paths: list[str], weights: list[float]) -> Soup:
    """Open and check every input (configs and headers); reads no tensor."""
    mix = shares(weights)
    configs = [raw_config(p) for p in paths]
    for path, config in zip(paths, configs):
        if str(config.get("peft_type", "")).upper() not in PROMPT_TYPES:
            raise InputError(f"{os.path.join(path, CONFIG)}: peft_type: {config.get('peft_type')!r} is no soft prompt "
                             f"({', '.join(PROMPT_TYPES)})")
    check_configs(paths, configs)
    files = [AdapterWeights(p) for p in paths]
    check_tensors(paths, files)
    return Soup(list(paths), configs, files, mix)


def averaged(soup: Soup, name: str) -> torch.Tensor:
    out = torch.zeros(soup.weights[0].tensors[name].shape, dtype=torch.float32)
    for path, w, share in zip(soup.paths, soup.weights, soup.mix):
        t = w.read(name).float()
        if not torch.isfinite(t).all():
            raise InputError(f"{os.path.join(path, WEIGHTS)}: tensor {name!r} holds NaN or Inf; the adapter is broken")
        out.add_(t, alpha=share)
    return out


def write_soup(soup: Soup, out: str, force: bool = False) -> str:
    """Write the soup to `out`, atomically; returns its absolute path."""
    out = check_output_path(out, [os.path.abspath(p) for p in soup.paths], force)
    infos = soup.weights[0].tensors
    names = sorted(infos)
    with atomic_folder(out, replace=force) as tmp:
        writer = ShardWriter(tmp, [Shard(WEIGHTS, tuple((n, infos[n].dtype, tuple(infos[n].shape)) for n in names))],
                             {"format": "pt"})
        try:
            for name in names:
                writer.write(name, averaged(soup, name).to(infos[name].dtype))
            writer.finish()
        finally:
            writer.abort()
        write_json(os.path.join(tmp, CONFIG), soup.configs[0])
    return out


def describe(soup: Soup) -> str:
    kind = soup.configs[0].get("peft_type")
    mix = ", ".join(f"{m:.3g}" for m in soup.mix)
    return (f"{kind} soup of {len(soup.paths)} adapters ({soup.configs[0].get('num_virtual_tokens')} virtual tokens), "
            f"shares {mix}")
