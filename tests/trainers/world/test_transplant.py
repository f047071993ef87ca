"""The small world's transplant experiment, on untrained models (fast): the byte-level BPE round-trips
the world's text and keeps the ChatML markers; a model given its own vocabulary back scores exactly as
before; a character model given the BPE's vocabulary keeps every character token's row; the answer
perplexity is per byte, so it does not depend on how a tokenizer cuts the text."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainers.world.tasks import TASKS, splits
from trainers.world.transplant import answer_perplexity, bpe_tokenizer, evaluate, run_transplant
from trainers.world.zoo import init_model, write_data


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Test splits, an untrained character-level model and an untrained BPE one (different seeds)."""
    root = tmp_path_factory.mktemp("world")
    write_data(str(root / "data"))
    texts = [r["prompt"] + r["completion"] for t in TASKS for r in splits(t, 200, 4, 0)[0]]
    return {"zoo": str(root), "char": init_model(str(root / "char"), seed=0),
            "bpe": init_model(str(root / "bpe"), seed=1, tokenizer=bpe_tokenizer(texts, 400))}


def test_the_bpe_round_trips_and_merges(world):
    tok = AutoTokenizer.from_pretrained(world["bpe"])
    text = "reverse apple:elppa<|im_end|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text) / 2  # merges: fewer tokens than characters
    assert tok.convert_tokens_to_ids("<|im_end|>") == ids[-1] and len(tok) == 400


def test_answer_perplexity_is_per_byte(world):
    """A character model's answer NLL counted by hand, token by token, over the answer's bytes."""
    model = AutoModelForCausalLM.from_pretrained(world["char"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(world["char"])
    row = {"prompt": "12+30=", "completion": "42"}
    ids = tok(row["prompt"] + row["completion"] + tok.eos_token, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    nll = -sum(logp[i - 1, ids[i]].item() for i in range(len(row["prompt"]), len(ids)))  # "4", "2", EOS
    assert answer_perplexity(model, tok, [row]) == pytest.approx(math.exp(nll / 2), rel=1e-5)


def test_own_vocabulary_back_changes_nothing(world, tmp_path):
    from surgery.vocab.tokensurgeon import plan_transplant, write_transplant

    plan = plan_transplant(world["bpe"], world["bpe"], "omp", 8)
    assert plan.new == [] and len(plan.shared) == 400
    out = write_transplant(plan, str(tmp_path / "same"))
    rows = {t: [json.loads(line) for line in open(os.path.join(world["zoo"], "data", t, "test.jsonl"))][:2]
            for t in TASKS}
    assert evaluate(out, rows, exact=False) == evaluate(world["bpe"], rows, exact=False)


def test_run_transplant_keeps_character_rows(world, tmp_path):
    result = run_transplant(world["char"], world["bpe"], world["zoo"], str(tmp_path / "t"), k=8, rows_per_task=1,
                            exact=False, echo=lambda m: None)
    assert set(result) >= {"original", "donor_scores", "omp", "subword", "mean"}
    assert result["omp"]["approximated"] > 0 and result["omp"]["shared"] > 90
    old, new = (load_file(os.path.join(f, "model.safetensors"))["model.embed_tokens.weight"]
                for f in (world["char"], str(tmp_path / "t" / "omp")))
    char, bpe = AutoTokenizer.from_pretrained(world["char"]), AutoTokenizer.from_pretrained(world["bpe"])
    for c in "a9+=:":
        assert torch.equal(new[bpe.convert_tokens_to_ids(c)], old[char.convert_tokens_to_ids(c)])
    assert os.path.isfile(tmp_path / "t" / "transplant.json")
