"""Sampling completions from a causal LM: the rollouts of GRPO, RFT, SPIN, PPO and RLAIF.

    samples = sample(model, tokenizer, ["12+34=", "5+6="], template=Template("none", None), n=4,
                     max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0)
    samples[0].text, samples[0].prompt_ids, samples[0].completion_ids, samples[0].finished
    batch = pack(samples, pad_id)   # right-padded input_ids, attention_mask, completion_mask

The model's own `generate` runs the decoding (KV cache, stopping at the end-of-sequence token),
on prompts left-padded into batches. The draw of each token is made here, in a logits processor,
from a random generator of its own per (seed, prompt, occurrence, sample index): the samples of a
prompt do not depend on what else is in the batch, on the batch size or on the global random state,
so batched equals unbatched and the same seed gives the same samples.

Temperature 0 is greedy decoding. top_p keeps the smallest set of most likely tokens whose
probability reaches top_p (nucleus sampling, Holtzman et al. 2019, https://arxiv.org/abs/1904.09751).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from surgery.errors import InputError
from trainers.templates import NONE, Template, render


@dataclass(frozen=True)
class Sample:
    """One completion of one prompt. `prompt_ids` is the rendered prompt (its length is the prompt
    length); `completion_ids` are the generated tokens, ending with the stop token when `finished`
    (else cut at max_new_tokens); `text` is the completion decoded without special tokens."""

    prompt: str
    index: int  # the prompt's position in the call's list
    text: str
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    finished: bool

    @property
    def prompt_length(self) -> int:
        return len(self.prompt_ids)


def sample(model, tokenizer, prompts: list[str], *, template: Template, n: int = 1, max_new_tokens: int = 64,
           temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 64,
           stop: tuple[str, ...] = ()) -> list[Sample]:
    """`n` completions of every prompt, prompt-major: samples[i * n + j] is prompt i's j-th (a GRPO group
    is `n` consecutive samples). The prompt is rendered as a user turn under `template` (as SFT renders
    it), or used as is with the template `none`. The model is left in the mode it was given in. A row
    also ends once its text reaches one of the `stop` strings (which its `text` then still holds)."""
    check_options(n, max_new_tokens, temperature, top_p, batch_size)
    encoded = [prompt_ids(tokenizer, template, p) for p in prompts]
    seen: dict[str, int] = {}
    jobs = []  # (prompt index, seed of its generator)
    for i, p in enumerate(prompts):
        occurrence = seen[p] = seen.get(p, -1) + 1
        jobs += [(i, row_seed(seed, p, occurrence, j)) for j in range(n)]
    stops = stop_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            generated = generate([encoded[i] for i, _ in chunk], [s for _, s in chunk], model, tokenizer, stops,
                                 max_new_tokens, temperature, top_p, stop)
            out += [finish(prompts[i], i, encoded[i], ids, stops, tokenizer) for (i, _), ids in zip(chunk, generated)]
        return out
    finally:
        model.train(was_training)


def check_options(n: int, max_new_tokens: int, temperature: float, top_p: float, batch_size: int) -> None:
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise InputError("sampling needs n, max_new_tokens and batch_size >= 1 "
                         f"(got {n}, {max_new_tokens}, {batch_size})")
    if temperature < 0 or not 0 < top_p <= 1:
        raise InputError(f"sampling needs temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")


def prompt_ids(tokenizer, template: Template, prompt: str) -> list[int]:
    text = prompt if template.name == NONE else render(tokenizer, template, [{"role": "user", "content": prompt}],
                                                       add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"prompt {prompt!r}: it encodes to no token, so there is nothing to continue")
    return ids


def row_seed(seed: int, prompt: str, occurrence: int, j: int) -> int:
    key = repr((seed, prompt, occurrence, j)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:7], "little")


def stop_ids(model, tokenizer) -> list[int]:
    """The tokenizer's end-of-sequence token and the model's own (a chat model may end turns with another)."""
    ids = {tokenizer.eos_token_id}
    own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(own) if isinstance(own, (list, tuple)) else {own}
    ids.discard(None)
    if not ids:
        raise InputError("the tokenizer has no end-of-sequence token, so a completion could never end")
    return sorted(ids)


@torch.no_grad()
def generate(prompts: list[list[int]], seeds: list[int], model, tokenizer, stops: list[int], max_new_tokens: int,
             temperature: float, top_p: float, stop: tuple[str, ...] = ()) -> list[list[int]]:
    """The generated tokens of each left-padded prompt (padding after a stop token included)."""
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    width = max(map(len, prompts))
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # (B, P)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (B, P)
    # do_sample=False: generate takes the argmax of what the processor leaves, the token it drew
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad,
                              num_beams=1)
    drawer = Draw(seeds, temperature, top_p)
    stopping = StoppingCriteriaList([StopText(tokenizer, width, stop)] if stop else [])
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                         logits_processor=LogitsProcessorList([drawer]), stopping_criteria=stopping)
    return out[:, width:].tolist()


class Draw:
    """A logits processor that draws each row's next token from its own generator and leaves only
    that token possible (the draw is inverse-CDF on one uniform per row and step)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        uniforms = torch.cat([torch.rand(1, generator=g) for g in self.generators])  # (B,)
        chosen = draw_tokens(scores.float().cpu(), uniforms, self.temperature, self.top_p)  # (B,)
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(len(chosen)), chosen.to(scores.device)] = 0.0
        return out


class StopText:
    """A stopping criterion: a row is done once its decoded completion holds one of the `stop` strings.
    Decoding the text (rather than transformers' `stop_strings`, which maps strings to token pieces and
    fails on word-level vocabularies) works with any tokenizer; a completion is at most max_new_tokens."""

    def __init__(self, tokenizer, width: int, stop: tuple[str, ...]):
        self.tokenizer, self.width, self.stop = tokenizer, width, stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)  # (B,) strings
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


def draw_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Token ids (B,) drawn from softmax(logits / temperature) restricted to the top-p nucleus,
    by inverse CDF over the tokens sorted by probability; greedy when temperature is 0."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely tokens
    kept = torch.where(before < top_p, sorted_probs, torch.zeros_like(sorted_probs))  # the most likely always stays
    cdf = kept.cumsum(-1) / kept.sum(-1, keepdim=True)  # (B, V)
    pick = torch.searchsorted(cdf, uniforms.unsqueeze(-1), right=True).clamp(max=logits.shape[-1] - 1)  # (B, 1)
    return order.gather(-1, pick).squeeze(-1)


def finish(prompt: str, index: int, prompt_ids: list[int], generated: list[int], stops: list[int], tokenizer) -> Sample:
    end = next((k for k, t in enumerate(generated) if t in stops), None)
    ids = generated if end is None else generated[:end + 1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Sample(prompt, index, text, tuple(prompt_ids), tuple(ids), end is not None)


def pack(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompt + completion of each sample, right-padded: input_ids, attention_mask and completion_mask,
    each (B, T); completion_mask is 1 on the completion's tokens (the stop token included)."""
    width = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    rows, attention, completion = [], [], []
    for s in samples:
        p, c = len(s.prompt_ids), len(s.completion_ids)
        rows.append(list(s.prompt_ids) + list(s.completion_ids) + [pad_id] * (width - p - c))
        attention.append([1] * (p + c) + [0] * (width - p - c))
        completion.append([0] * p + [1] * c + [0] * (width - p - c))
    return {"input_ids": torch.tensor(rows), "attention_mask": torch.tensor(attention),
            "completion_mask": torch.tensor(completion)}
