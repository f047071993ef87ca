"""Sampling: the token draw by hand, determinism under a seed, batched equals unbatched, greedy equals
the model's own greedy decoding, and the packed tensors' masks."""

from __future__ import annotations

import math

import pytest
import torch

from surgery.errors import InputError
from trainers.generation import Sample, draw_tokens, pack, sample
from trainers.templates import Template, resolve

PROMPTS = ["the a of", "to and", "the a of", "in is it you that"]


@pytest.fixture(scope="module")
def lm(base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)


def ids(samples: list[Sample]) -> list[tuple[int, ...]]:
    return [s.completion_ids for s in samples]


def test_draw_by_hand():
    """Probabilities [0.5, 0.3, 0.2] (logits are their logs). Inverse CDF: u < 0.5 -> token 0,
    0.5 <= u < 0.8 -> token 1, else token 2. With top_p = 0.7 the nucleus is {0, 1} (0.5 < 0.7,
    0.8 >= 0.7), renormalised to [5/8, 3/8]: u = 0.7 -> token 1, u = 0.6 -> token 0.
    Temperature 0 is the argmax whatever u."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(3, 1)
    assert draw_tokens(logits, torch.tensor([0.1, 0.6, 0.9]), 1.0, 1.0).tolist() == [0, 1, 2]
    assert draw_tokens(logits, torch.tensor([0.6, 0.7, 0.99]), 1.0, 0.7).tolist() == [0, 1, 1]
    assert draw_tokens(logits, torch.tensor([0.99, 0.99, 0.99]), 0.0, 1.0).tolist() == [0, 0, 0]


def test_temperature_flattens():
    """Temperature 2 on probabilities [0.8, 0.2]: softmax(log p / 2) = [sqrt .8, sqrt .2] / sum
    = [0.6667, 0.3333]; u = 0.7 draws token 1 (it draws token 0 at temperature 1)."""
    logits = torch.log(torch.tensor([[0.8, 0.2]]))
    assert draw_tokens(logits, torch.tensor([0.7]), 1.0, 1.0).tolist() == [0]
    assert draw_tokens(logits, torch.tensor([0.7]), 2.0, 1.0).tolist() == [1]
    assert math.sqrt(0.8) / (math.sqrt(0.8) + math.sqrt(0.2)) == pytest.approx(2 / 3)


def test_same_seed_same_samples_and_layout(lm):
    model, tok = lm
    kw = dict(template=resolve("chatml", tok), n=3, max_new_tokens=8, temperature=1.0, top_p=1.0)
    a, b = sample(model, tok, PROMPTS, seed=5, **kw), sample(model, tok, PROMPTS, seed=5, **kw)
    c = sample(model, tok, PROMPTS, seed=6, **kw)
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert [s.index for s in a] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # prompt-major groups
    assert len(set(ids(a[:3]))) > 1  # a group's samples differ
    assert ids(a[:3]) != ids(a[6:9])  # a repeated prompt gets fresh samples


def test_batched_equals_unbatched(lm):
    model, tok = lm
    kw = dict(template=resolve("chatml", tok), n=2, max_new_tokens=8, temperature=0.8, top_p=0.9, seed=3)
    together = sample(model, tok, PROMPTS[:2] + PROMPTS[3:], batch_size=64, **kw)
    small_batches = sample(model, tok, PROMPTS[:2] + PROMPTS[3:], batch_size=3, **kw)
    alone = [s for p in PROMPTS[:2] + PROMPTS[3:] for s in sample(model, tok, [p], batch_size=1, **kw)]
    assert ids(together) == ids(small_batches) == ids(alone)


def test_greedy_equals_generate_without_padding(lm):
    model, tok = lm
    got = sample(model, tok, PROMPTS, template=Template("none", None), n=1, max_new_tokens=6, temperature=0.0)
    for s in got:
        x = torch.tensor([list(s.prompt_ids)])
        ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, x.shape[1]:].tolist()
        end = ref.index(tok.eos_token_id) + 1 if tok.eos_token_id in ref else len(ref)
        assert list(s.completion_ids) == ref[:end]


def test_mode_restored_and_bad_options(lm):
    model, tok = lm
    model.train()
    sample(model, tok, PROMPTS[:1], template=Template("none", None), max_new_tokens=2)
    assert model.training
    model.eval()
    with pytest.raises(InputError, match="top_p"):
        sample(model, tok, PROMPTS[:1], template=Template("none", None), top_p=0.0)


def test_stop_token_ends_and_pack(lm):
    _, tok = lm
    eos = tok.eos_token_id
    from trainers.generation import finish

    done = finish("p", 0, [5, 6, 7], [9, 10, eos, 3, 3], [eos], tok)
    cut = finish("q", 1, [5], [9, 10, 11], [eos], tok)
    assert done.completion_ids == (9, 10, eos) and done.finished and "<|im_end|>" not in done.text
    assert done.prompt_length == 3
    assert cut.completion_ids == (9, 10, 11) and not cut.finished
    batch = pack([done, cut], pad_id=3)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 9, 10, eos], [5, 9, 10, 11, 3, 3]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 0, 0]]
